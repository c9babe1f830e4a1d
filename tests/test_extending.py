"""The README's 'Extending from Python' example runs as written and uses the user's parts."""

import csv
import json
import os
import re

import numpy as np
import tensorflow as tf

_README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def _example_code() -> str:
  with open(_README) as f:
    text = f.read()
  match = re.search(r'<!-- example:extending -->\s*```python\n(.*?)```', text, re.S)
  assert match, 'README.md lost its extending example'
  return match.group(1)


def test_readme_extending_example(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_example_code(), 'README.md:extending', 'exec'), namespace)  # pylint: disable=exec-used
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
