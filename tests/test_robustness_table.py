"""tff_med.robustness: defence × attack cells against numpy on hand-made summaries,
refusals in the table, the cost without attack; experiments.robustness end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tff_med import robustness

_SCOPES = ('pooled', 'mean_hospital')
_METRICS = ('accuracy', 'auc')


def _summary(seed, value):
  return {'seed': seed, 'wall_seconds': 1.0,
          'pooled': {'accuracy': value, 'auc': value + 0.1},
          'mean_hospital': {'accuracy': value - 0.1, 'auc': value + 0.05}}


_VALUES = {('none', 'none'): [0.80, 0.84, 0.83], ('none', 'stale'): [0.50, 0.61, 0.40],
           ('median', 'none'): [0.78, 0.80, 0.82], ('median', 'stale'): [0.75, 0.79, 0.77]}
_REASON = '--defences=trimmed_mean with --robust_trim=1 drops 1 update(s) at each end'


def _hand_made():
  return {robustness.setting_name(d, a): [_summary(seed, v) for seed, v in enumerate(values)]
          for (d, a), values in _VALUES.items()}


def test_cells_cost_and_refusals_from_hand_made_summaries(tmp_path):
  refused = {robustness.setting_name('trimmed_mean', a): _REASON for a in ('none', 'stale')}
  rows, markdown = robustness.write_robustness(
      _hand_made(), refused, ['none', 'median', 'trimmed_mean'], ['none', 'stale'], 'h0',
      [0, 1, 2], str(tmp_path), title='toy')
  offsets = {('pooled', 'accuracy'): 0, ('pooled', 'auc'): 0.1,
             ('mean_hospital', 'accuracy'): -0.1, ('mean_hospital', 'auc'): 0.05}
  for (defence, attack), values in _VALUES.items():
    for (scope, metric), offset in offsets.items():
      cell = rows['cells'][defence][attack][f'{scope}/{metric}']
      expected = np.array(values) + offset
      assert cell['mean'] == pytest.approx(expected.mean())
      assert cell['std'] == pytest.approx(expected.std(ddof=1))
      assert cell['n'] == 3
  assert rows['cells']['trimmed_mean'] == {'none': {'refused': _REASON},
                                           'stale': {'refused': _REASON}}
  # Cost without attack: median's no-attack runs minus none's, seed by seed.
  differences = np.array(_VALUES['median', 'none']) - np.array(_VALUES['none', 'none'])
  for column in ('pooled/accuracy', 'mean_hospital/auc'):
    cost = rows['cost_without_attack']['median'][column]
    assert cost['mean'] == pytest.approx(differences.mean())
    assert cost['std'] == pytest.approx(differences.std(ddof=1))
  assert rows['cost_without_attack']['none']['pooled/auc']['mean'] == pytest.approx(0)
  assert 'trimmed_mean' not in rows['cost_without_attack']
  # Markdown: a table per metric, refusals as one numbered footnote, the cost table.
  assert markdown.count('| median | ') == 5
  assert markdown.count('| trimmed_mean | refused [1] | refused [1] |') == 4
  assert f'[1] refused: {_REASON}' in markdown
  pooled_accuracy = np.array(_VALUES['none', 'stale'])
  assert f'| none | 0.823 ± 0.021 | {pooled_accuracy.mean():.3f} ± ' \
         f'{pooled_accuracy.std(ddof=1):.3f} |' in markdown
  assert f'| median | {differences.mean():+.3f} ± {differences.std(ddof=1):.3f} |' in markdown
  assert 'Attacker: h0;' in markdown and 'over 3 seeds (0, 1, 2)' in markdown
  with open(tmp_path / 'robustness.md') as f:
    assert f.read() == markdown
  with open(tmp_path / 'robustness.json') as f:
    written = json.load(f)
  assert written['cells']['median']['stale']['pooled/accuracy']['mean'] == pytest.approx(0.77)
  assert written['attacker'] == 'h0' and len(written['runs']) == 12


def test_no_cost_table_without_the_undefended_no_attack_run(tmp_path):
  summaries = {k: v for k, v in _hand_made().items() if k.startswith('median')}
  rows, markdown = robustness.write_robustness(summaries, {}, ['median'], ['none', 'stale'],
                                               'h0', [0, 1, 2], str(tmp_path), title='toy')
  assert 'cost_without_attack' not in rows and 'costs without attack' not in markdown


def test_diverged_seeds_are_counted_and_left_out_of_the_means(tmp_path):
  summaries = _hand_made()
  nan = {'accuracy': float('nan'), 'auc': float('nan')}
  summaries['none+stale'][1].update(pooled=nan, mean_hospital=nan)
  summaries['median+stale'] = [dict(s, pooled=nan, mean_hospital=nan)
                               for s in summaries['median+stale']]
  rows, markdown = robustness.write_robustness(summaries, {}, ['none', 'median'],
                                               ['none', 'stale'], 'h0', [0, 1, 2],
                                               str(tmp_path), title='toy')
  cell = rows['cells']['none']['stale']
  finite = np.array(_VALUES['none', 'stale'])[[0, 2]]
  assert (cell['diverged'], cell['seeds']) == (1, 3)
  assert cell['pooled/accuracy']['n'] == 2
  assert cell['pooled/accuracy']['mean'] == pytest.approx(finite.mean())
  assert (f'| none | 0.823 ± 0.021 | {finite.mean():.3f} ± {finite.std(ddof=1):.3f} '
          '(1 of 3 seeds diverged) |') in markdown
  assert markdown.count('| median | 0.800 ± 0.020 | diverged (3 of 3 seeds) |') == 1
  assert 'diverged' not in rows['cells']['none']['none']


def _binary(*flags):
  return subprocess.run([sys.executable, '-m', 'experiments.robustness', *flags],
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


def test_binary_trains_every_pair_and_reports_the_refused_ones(tmp_path):
  result = _binary('--dataset=breast_cancer', '--num_hospitals=5', '--rounds=2', '--seeds=1',
                   '--defences=none,median,trimmed_mean', '--attacks=none,scaled_update',
                   '--robust_trim=3', f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'robustness.json') as f:
    table = json.load(f)
  attacker = table['attacker']
  assert table['seeds'] == [0] and attacker
  for defence in ('none', 'median'):
    for attack in ('none', 'scaled_update'):
      with open(tmp_path / f'{defence}+{attack}' / 'seed0' / 'summary.json') as f:
        summary = json.load(f)
      assert summary['config']['robust']['name'] == defence
      assert summary['config']['attack']['name'] == attack
      assert summary['config']['attack']['attacker'] == (None if attack == 'none'
                                                          else attacker)
      for scope in _SCOPES:
        for metric in _METRICS:
          cell = table['cells'][defence][attack][f'{scope}/{metric}']
          assert cell == {'mean': summary[scope][metric], 'std': 0.0, 'n': 1}
  reason = table['cells']['trimmed_mean']['none']['refused']
  assert '--robust_trim=3' in reason and 'more than 6 hospitals' in reason
  assert not os.path.exists(tmp_path / 'trimmed_mean+none')
  with open(tmp_path / 'robustness.md') as f:
    markdown = f.read()
  assert f'Attacker: {attacker} (scaled_update scale 100)' in markdown
  assert f'[1] refused: {reason}' in markdown
  assert markdown in result.stdout


def test_binary_refuses_the_flags_the_grid_replaces(tmp_path):
  result = _binary('--dataset=breast_cancer', '--robust=median', f'--output_dir={tmp_path}/o')
  assert result.returncode != 0
  assert result.stderr.startswith('error: --robust is not used by this binary')
  assert not os.path.exists(tmp_path / 'o')
