"""Comparison, privacy-sweep and secure-aggregation-cost tables against numpy
re-computations, and the files they write from a grid's summaries."""

import json
import math

import numpy as np
import pytest

from tff_med import compare, privacy_sweep
from tff_med.secure_agg import cost_table


def _summary(algorithm, seed, rng, hospitals=('a', 'b')):
  per = {h: {'accuracy': rng.random(), 'auc': rng.random()} for h in hospitals}
  evaluation = {'per_hospital': per,
                'mean_hospital': {k: float(np.mean([per[h][k] for h in hospitals]))
                                  for k in ('accuracy', 'auc')},
                'pooled': {'accuracy': rng.random(), 'auc': rng.random()}}
  summary = {'algorithm': algorithm, 'seed': seed, 'wall_seconds': 1.0, **evaluation}
  if algorithm == 'local':
    summary['local_models'] = {h: _summary('x', seed, rng, hospitals) for h in hospitals}
  return summary


def test_compare_aggregates_mean_and_sample_std_over_seeds():
  rng = np.random.default_rng(0)
  runs = [_summary(a, s, rng) for a in ('fedavg', 'local') for s in range(3)]
  table = compare.aggregate(runs)
  assert set(table) == {'fedavg', 'local (a)', 'local (b)'}
  fedavg = [r for r in runs if r['algorithm'] == 'fedavg']
  values = [r['per_hospital']['b']['auc'] for r in fedavg]
  assert table['fedavg']['b']['auc']['mean'] == pytest.approx(np.mean(values))
  assert table['fedavg']['b']['auc']['std'] == pytest.approx(np.std(values, ddof=1))
  local_a = [r['local_models']['a']['pooled']['accuracy'] for r in runs if 'local_models' in r]
  assert table['local (a)']['pooled']['accuracy']['mean'] == pytest.approx(np.mean(local_a))
  markdown = compare.to_markdown(table, ['a', 'b'])
  assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in markdown
  assert markdown.count('| local (') == 2 * 2  # Two local rows in each metric's table.


def test_compare_leaves_undefined_auc_out():
  rng = np.random.default_rng(1)
  runs = [_summary('fedavg', s, rng) for s in range(3)]
  runs[0]['per_hospital']['a']['auc'] = None  # One-class test set in one seed.
  cell = compare.aggregate(runs)['fedavg']['a']['auc']
  assert cell['n'] == 2
  assert cell['mean'] == pytest.approx(np.mean([r['per_hospital']['a']['auc'] for r in runs[1:]]))


def test_privacy_sweep_row_reports_worst_epsilon_and_mean_noise():
  rng = np.random.default_rng(2)
  runs = [_summary('fedavg', s, rng) for s in range(3)]
  for run, (eps, sigma) in zip(runs, [(0.9, 2.0), (1.0, 2.2), (math.inf, 0.0)]):
    run['privacy'] = {'level': 'record', 'epsilon': eps, 'noise_multiplier': sigma}
  row = privacy_sweep.summarize(runs)
  assert math.isinf(row['epsilon'])
  assert row['noise_multiplier'] == pytest.approx(np.mean([2.0, 2.2, 0.0]))
  values = [r['mean_hospital']['accuracy'] for r in runs]
  assert row['mean_hospital/accuracy']['mean'] == pytest.approx(np.mean(values))
  assert row['mean_hospital/accuracy']['std'] == pytest.approx(np.std(values, ddof=1))


def test_comparison_files_from_the_grid_summaries(tmp_path):
  rng = np.random.default_rng(3)
  summaries = {a: [_summary(a, s, rng) for s in range(2)] for a in ('fedavg', 'local')}
  table, markdown = compare.write_comparison(summaries, [0, 1], str(tmp_path), ['a', 'b'], 't')
  assert table == compare.aggregate(summaries['fedavg'] + summaries['local'])
  assert (tmp_path / 'comparison.md').read_text() == markdown
  written = json.loads((tmp_path / 'comparison.json').read_text())
  assert written['algorithms'] == ['fedavg', 'local'] and written['seeds'] == [0, 1]
  assert [(r['algorithm'], r['seed']) for r in written['runs']] == [
      ('fedavg', 0), ('fedavg', 1), ('local', 0), ('local', 1)]


def test_privacy_sweep_files_from_the_grid_summaries(tmp_path):
  rng = np.random.default_rng(4)
  epsilons = [1.0, math.inf]
  summaries = {}
  for name in [privacy_sweep.setting_name(e) for e in epsilons] + list(
      privacy_sweep.REFERENCES.values()):
    summaries[name] = [_summary('fedavg', s, rng) for s in range(2)]
    for run in summaries[name]:
      run['privacy'] = {'level': 'record' if name.startswith('epsilon') else 'none',
                        'epsilon': 1.0, 'noise_multiplier': 3.0, 'delta': 1e-4}
  assert list(summaries)[:2] == ['epsilon_1', 'epsilon_inf']
  rows, markdown = privacy_sweep.write_privacy_sweep(summaries, epsilons, [0, 1],
                                                     str(tmp_path), 't')
  assert rows[math.inf] == privacy_sweep.summarize(summaries['epsilon_inf'])
  assert '| non-private | – | – |' in markdown and '| local only | – | – |' in markdown
  written = json.loads((tmp_path / 'privacy_sweep.json').read_text())
  assert list(written['rows']) == ['1', 'inf'] and written['delta'] == 1e-4
  assert (tmp_path / 'privacy_sweep.png').exists()


def test_secure_agg_cost_rows_from_the_grid_summaries(tmp_path):
  rng = np.random.default_rng(5)
  settings = cost_table.cost_settings(['tff', 'masking'], [8, 16])
  assert settings[0] == ('none', 0) and len(settings) == 5
  summaries = {}
  for mode, width in settings:
    summaries[cost_table.setting_name(mode, width)] = runs = [
        _summary('fedavg', s, rng) for s in range(2)]
    for run in runs:
      run.update(rounds=4, secure_aggregation={'bytes_per_client': 10 * width + 56})
  assert 'none_0bits' in summaries and 'masking_16bits' in summaries
  markdown = cost_table.write_cost_table(summaries, settings, [0, 1], str(tmp_path), 't')
  assert '| plain FedAvg (float32) | 32 |' in markdown and '| masking | 16 |' in markdown
  assert '| 216 | 0.25 |' in markdown  # bytes of masking_16bits; 1 s / 4 rounds.
  rows = json.loads((tmp_path / 'secure_agg_cost.json').read_text())['rows']
  assert [(r['mode'], r['bits']) for r in rows] == [('none', 32), ('tff', 8), ('tff', 16),
                                                    ('masking', 8), ('masking', 16)]
