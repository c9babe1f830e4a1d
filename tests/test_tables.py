"""Comparison and privacy-sweep tables against numpy re-computations."""

import math

import numpy as np
import pytest

from tff_med import compare, privacy_sweep


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
