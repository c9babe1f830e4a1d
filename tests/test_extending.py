"""The README's 'Extending from Python' example runs as written and uses the user's parts."""

import csv
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

_README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def _example_code() -> str:
  with open(_README) as f:
    text = f.read()
  match = re.search(r'<!-- example:extending -->\s*```python\n(.*?)```', text, re.S)
  assert match, 'README.md lost its extending example'
  return match.group(1)


@pytest.fixture(scope='module')
def example(tmp_path_factory):
  """(folder, namespace) of the README example, run once."""
  folder = tmp_path_factory.mktemp('extending')
  cwd = os.getcwd()
  os.chdir(folder)
  try:
    namespace = {}
    exec(compile(_example_code(), 'README.md:extending', 'exec'), namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  return folder, namespace


def test_readme_extending_example(example):
  tmp_path, namespace = example
  run_dir = tmp_path / 'runs' / 'my_study'
  with open(run_dir / 'summary.json') as f:
    summary = json.load(f)
  # The user's ClientData: its hospitals and row counts reach the summary.
  assert summary['dataset'] == 'my_study'
  assert {h: v['num_train'] for h, v in summary['per_hospital'].items()} == {
      'north': 80, 'south': 120}
  # The user's model: the saved global model has its layer sizes.
  saved = tf.keras.models.load_model(str(run_dir / 'saved_model'))
  assert [w.shape for w in saved.get_weights()] == [
      w.shape for w in namespace['my_model']().get_weights()] == [(5, 8), (8,), (8, 1), (1,)]
  # The user's aggregator: its clipping measurements are released every round.
  with open(run_dir / 'metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5
  assert all(float(r['aggregator/clipping_norm']) == 1.0 for r in rows)
  # The learnt rule (x0 + x1/2 > 0) beats chance on held-out records.
  assert summary['pooled']['accuracy'] > 0.6
  assert np.isfinite(summary['pooled']['auc'])


def test_readme_extending_example_with_dp_and_a_user_mechanism(example):
  """Step 4: the user's wrapper and aggregator run under record-level DP, the
  ledger is the one dp_accounting gives, and the server's steps stay within the
  wrapper's clip; step 5 names the conflict."""
  tmp_path, namespace = example
  assert namespace['conflict'].startswith('secure_agg.mode=masking sums masked updates')
  run_dir = tmp_path / 'runs' / 'my_study_dp'
  with open(run_dir / 'summary.json') as f:
    summary = json.load(f)
  with open(run_dir / 'program_state' / 'run.json') as f:
    assert json.load(f)['plan'] == ['ServerStepClipper', 'RecordLevelDp', 'LearningPlan']
  # DP-SGD per hospital: q = 16 / n, ceil(n / 16) steps per round, 5 rounds, sigma 1.
  import dp_accounting  # pylint: disable=g-import-not-at-top
  for hospital, n in (('north', 80), ('south', 120)):
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        16 / n, dp_accounting.GaussianDpEvent(1.0)), -(-n // 16) * 5)
    expected = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(
        summary['privacy']['delta'])
    assert summary['privacy']['per_hospital'][hospital]['epsilon'] == pytest.approx(expected)
  # The user's aggregator combines the DP-SGD updates; under DP its measurements
  # (which may depend on records) are not released. The saved model moved at
  # most 5 clipped steps of 0.5 from its initial weights.
  process = namespace['plan'].inner.process
  assert 'clipping_norm' in str(process.next.type_signature.result)
  with open(run_dir / 'metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5 and not any(k.startswith('aggregator/clipping') for k in rows[0])
  saved = tf.keras.models.load_model(str(run_dir / 'saved_model'))
  moved = np.sqrt(sum(np.sum((a - b)**2) for a, b in zip(
      saved.get_weights(), namespace['my_model']().get_weights())))
  assert 0 < moved <= 5 * 0.5 + 1e-5
