"""`python -m experiments.train` end to end on a tiny configuration, and its bad-input exits."""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tff_med import data as data_lib


def _train(*flags, cwd=None):
  return subprocess.run([sys.executable, '-m', 'experiments.train', *flags],
                        capture_output=True, text=True, timeout=600, cwd=cwd,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


@pytest.fixture(scope='module')
def fedavg_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('run'))
  result = _train('--dataset=breast_cancer', '--num_hospitals=3', '--algorithm=fedavg',
                  '--rounds=3', '--eval_every=2', '--batch_size=32', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result.stdout


def test_summary_json(fedavg_run):
  out, _ = fedavg_run
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['algorithm'] == 'fedavg' and summary['dataset'] == 'breast_cancer'
  assert summary['rounds'] == 3 and summary['seed'] == 0 and summary['wall_seconds'] > 0
  data = data_lib.load(data_lib.DataConfig('breast_cancer', num_hospitals=3, seed=0))
  assert set(summary['per_hospital']) == set(data.hospitals)
  for h in data.hospitals:
    entry = summary['per_hospital'][h]
    assert entry['num_train'] == data.num_train(h)
    assert entry['num_test'] == len(data.test[h][1])
    assert 0 <= entry['accuracy'] <= 1 and 0 <= entry['auc'] <= 1
  assert summary['mean_hospital']['accuracy'] == pytest.approx(
      np.mean([summary['per_hospital'][h]['accuracy'] for h in data.hospitals]))
  assert summary['pooled']['accuracy'] > 0.8  # 3 rounds suffice on this easy table.


def test_saved_model_reproduces_pooled_metrics(fedavg_run):
  out, _ = fedavg_run
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  model = tf.keras.models.load_model(os.path.join(out, 'saved_model'))
  data = data_lib.load(data_lib.DataConfig('breast_cancer', num_hospitals=3, seed=0))
  x, y = data.pooled('test')
  logits = model.predict(x, verbose=0)
  assert logits.shape == (len(y), 1)
  assert np.mean((logits[:, 0] > 0) == (y == 1)) == pytest.approx(
      summary['pooled']['accuracy'])


def test_metrics_csv_has_a_row_per_round(fedavg_run):
  out, _ = fedavg_run
  with open(os.path.join(out, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [int(r['round']) for r in rows] == [1, 2, 3]
  assert all(float(r['train/loss']) > 0 for r in rows)
  assert rows[1]['eval/pooled/accuracy'] and rows[2]['eval/pooled/accuracy']
  assert not rows[0]['eval/pooled/accuracy']  # eval_every=2: round 1 not evaluated.


def test_tensorboard_scalars(fedavg_run):
  out, _ = fedavg_run
  files = glob.glob(os.path.join(out, 'tensorboard', '*tfevents*'))
  assert files
  tags = set()
  for path in files:
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={'tensors': 0})
    accumulator.Reload()
    tags |= set(accumulator.Tags()['tensors']) | set(accumulator.Tags()['scalars'])
  expected = {'train/loss', 'train/accuracy', 'train/auc', 'round_seconds',
              'eval/pooled/accuracy', 'eval/pooled/auc', 'eval/mean_hospital/accuracy',
              'eval/per_hospital/childrens/accuracy', 'eval/per_hospital/oncology/auc'}
  assert expected <= tags, expected - tags


def test_progress_line_per_round(fedavg_run):
  _, stdout = fedavg_run
  lines = [l for l in stdout.splitlines() if l.startswith('round')]
  assert len(lines) == 3
  assert all('loss' in l and 'elapsed' in l and 'left' in l for l in lines)


@pytest.mark.parametrize('flags,culprit', [
    (['--dataset=heart_disease', '--data_dir=/nonexistent/folder'], '/nonexistent/folder'),
    (['--dataset=breast_cancer', '--clients_per_round=7'], '--clients_per_round=7'),
    (['--dataset=breast_cancer', '--rounds=0'], '--rounds=0'),
    (['--dataset=breast_cancer', '--model=cnn'], '--model=cnn'),
    (['--dataset=breast_cancer', '--dropout=1.5', '--model=mlp'], '--dropout=1.5'),
    # M6: under DP, features scaled with the records' own statistics are refused.
    (['--dataset=breast_cancer', '--dp=record', '--noise_multiplier=1', '--scaling=zscore'],
     '--scaling=public_ranges'),
    (['--dataset=breast_cancer', '--dp=record', '--target_epsilon=2', '--max_epsilon=1'],
     '--max_epsilon=1.0 is below --target_epsilon=2.0'),
    (['--dataset=csv', '--feature_ranges=age:1'], "--feature_ranges: 'age:1'"),
    (['--dataset=breastmnist', '--scaling=zscore'], '--scaling=zscore applies to tables'),
    # m4: a threshold of at most half the hospitals lets a lying server unmask one.
    (['--dataset=breast_cancer', '--num_hospitals=5', '--secure_agg=masking',
      '--client_weighting=uniform', '--secagg_threshold=2'], '--secagg_threshold=2'),
    # The library names config fields (dropouts=3, privacy.level=record, ...); the
    # binary prints the flags that set them.
    (['--dataset=breast_cancer', '--simulate_dropouts=3'], '--simulate_dropouts=3'),
    (['--dataset=breast_cancer', '--min_clients=4'], '--min_clients=4'),
    (['--dataset=breast_cancer', '--algorithm=local', '--dp=record', '--noise_multiplier=1'],
     '--dp=record needs a federated --algorithm'),
    (['--dataset=breast_cancer', '--secure_agg=tff', '--client_weighting=uniform',
      '--secagg_bits=40'], '--secagg_bits=40'),
    (['--dataset=breast_cancer', '--dp=record', '--l2_norm_clip=0', '--noise_multiplier=1'],
     '--l2_norm_clip=0'),
])
def test_bad_flags_exit_nonzero_naming_the_culprit(flags, culprit, tmp_path):
  result = _train(*flags, f'--output_dir={tmp_path}')
  assert result.returncode != 0
  assert culprit in result.stderr, result.stderr[-2000:]
  assert result.stderr.startswith('error: ')
  assert not re.search(r'(?<![\w/-])(privacy|secure_agg|algorithm|data)\.[a-z]', result.stderr)
  assert not os.path.exists(tmp_path / 'summary.json')


def test_bad_csv_row_exits_before_training(tmp_path):
  good = 'age,sex,label\n50,m,1\n60,f,0\n55,f,1\n45,m,0\n52,m,1\n48,f,0\n'
  (tmp_path / 'north.csv').write_text(good)
  (tmp_path / 'south.csv').write_text(good.replace('55,f,1', '55,f,x'))
  result = _train('--dataset=csv', f'--csv_files={tmp_path}/north.csv,{tmp_path}/south.csv',
                  '--categorical_columns=sex', f'--output_dir={tmp_path}/out')
  assert result.returncode != 0
  assert 'south' in result.stderr and 'label' in result.stderr
  assert not os.path.exists(tmp_path / 'out' / 'summary.json')


def test_audit_binary_on_the_finished_run(fedavg_run):
  out, _ = fedavg_run
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.audit', f'--run_dir={out}', '--local_hospital=oncology'],
      capture_output=True, text=True, timeout=600, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, 'audit.json')) as f:
    audit = json.load(f)
  data = data_lib.load(data_lib.DataConfig('breast_cancer', num_hospitals=3, seed=0))
  per_hospital = audit['global_model']['per_hospital']
  assert set(per_hospital) == set(data.hospitals)
  for h in data.hospitals:
    assert per_hospital[h]['num_members'] == data.num_train(h)
    assert per_hospital[h]['num_non_members'] == len(data.test[h][1])
    assert 0 <= per_hospital[h]['best']['auc'] <= 1
  assert audit['global_model']['overall']['num_members'] == len(data.pooled('train')[1])
  assert audit['local_model']['hospital'] == 'oncology'
  tags = set()
  for path in glob.glob(os.path.join(out, 'tensorboard', '*tfevents*')):
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={'tensors': 0})
    accumulator.Reload()
    tags |= set(accumulator.Tags()['tensors']) | set(accumulator.Tags()['scalars'])
  assert {'audit/overall/auc', 'audit/per_hospital/childrens/advantage',
          'audit/local_model/auc'} <= tags
