"""Kill a heart_disease run at a random round (SIGKILL or SIGINT) and run the same
command again: the run continues from its last saved round, leaves no
worker_binary behind, and ends where an uninterrupted run ends — the same
weights without DP (masking with a dropout), the same ledger with record-level
DP (whose noise comes from the OS)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tff_med import audit_log, serving

ROUNDS = 8
MASKING = ['--secure_agg=masking', '--simulate_dropouts=1']
RECORD_DP = ['--dp=record', '--noise_multiplier=1.0']


def _command(data_dir, output_dir, extra):
  return [sys.executable, '-m', 'experiments.train', '--dataset=heart_disease',
          f'--data_dir={data_dir}', f'--rounds={ROUNDS}', '--eval_every=4',
          f'--output_dir={output_dir}', *extra]


def _env():
  return {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'PYTHONUNBUFFERED': '1'}


def _run(data_dir, output_dir, extra):
  done = subprocess.run(_command(data_dir, output_dir, extra), capture_output=True, text=True,
                        env=_env(), timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return _summary(output_dir)


def _summary(output_dir):
  with open(os.path.join(output_dir, 'summary.json')) as f:
    return json.load(f)


def _children(pid):
  """Pids of `pid`'s child processes (the worker_binary among them)."""
  children = []
  for task in os.listdir(f'/proc/{pid}/task'):
    with open(f'/proc/{pid}/task/{task}/children') as f:
      children += [int(c) for c in f.read().split()]
  return children


def _alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _cut(data_dir, output_dir, extra, signum, at_round):
  """Starts the run, sends `signum` once round `at_round` is printed; returns
  (exit code, the child pids it had)."""
  process = subprocess.Popen(_command(data_dir, output_dir, extra), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=_env())
  children = []
  for line in process.stdout:
    if line.startswith(f'round {at_round:4d}/'):
      children = _children(process.pid)
      process.send_signal(signum)
      break
  process.stdout.read()
  code = process.wait(timeout=300)
  deadline = time.monotonic() + 10
  while any(_alive(c) for c in children) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert children, 'the run never reached the round or started no worker'
  assert not any(_alive(c) for c in children), f'worker_binary left running: {children}'
  return code


def _rounds_log(output_dir):
  with open(os.path.join(output_dir, 'audit_log.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return ([l['round'] for l in lines if l['event'] == 'round'],
          [(l['event'], l['after_round']) for l in lines if 'after_round' in l])


def _weights(output_dir):
  model = tf.keras.models.load_model(  # heart_disease: one export per hospital, same weights.
      serving.keras_model_path(os.path.join(output_dir, 'saved_model')), compile=False)
  return model.get_weights()


@pytest.fixture(scope='module')
def references(data_dir, tmp_path_factory):
  """Uninterrupted runs: masking with a dropout, and record-level DP."""
  root = tmp_path_factory.mktemp('references')
  return {name: (str(root / name), _run(data_dir, str(root / name), extra))
          for name, extra in (('masking', MASKING), ('record_dp', RECORD_DP))}


@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGINT])
def test_masking_run_cut_and_rerun_ends_with_the_uninterrupted_weights(
    data_dir, tmp_path, references, signum):
  at_round = random.SystemRandom().randint(2, ROUNDS - 2)
  code = _cut(data_dir, str(tmp_path), MASKING, signum, at_round)
  assert code != 0
  if signum == signal.SIGINT:  # Ends after the round, says so, saves no model.
    assert _summary(tmp_path)['status'] == 'interrupted'
    assert _summary(tmp_path)['rounds_completed'] == at_round
    assert not (tmp_path / 'saved_model').exists()
  summary = _run(data_dir, str(tmp_path), MASKING)
  assert summary['status'] == 'completed' and summary['sessions'] == 2
  rounds, events = _rounds_log(tmp_path)
  assert rounds == list(range(1, ROUNDS + 1))  # None trained twice, none skipped.
  assert events[0] == ('started', 0) and events[-1] == ('completed', ROUNDS)
  assert ('resumed', at_round) in events or ('resumed', at_round - 1) in events
  # One audit chain across both sessions, ending at the head summary.json records.
  assert audit_log.verify_run(str(tmp_path))['head'] == summary['audit_log_sha256']
  reference_dir, reference = references['masking']
  assert summary['dropouts'] == reference['dropouts'] == ROUNDS
  for got, want in zip(_weights(tmp_path), _weights(reference_dir)):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_record_dp_run_killed_and_rerun_continues_the_same_ledger(data_dir, tmp_path,
                                                                   references):
  at_round = random.SystemRandom().randint(2, ROUNDS - 2)
  _cut(data_dir, str(tmp_path), RECORD_DP, signal.SIGKILL, at_round)
  summary = _run(data_dir, str(tmp_path), RECORD_DP)
  _, reference = references['record_dp']
  rounds, events = _rounds_log(tmp_path)
  assert rounds == list(range(1, ROUNDS + 1))
  assert [e for e, _ in events] == ['started', 'resumed', 'completed']
  verified = audit_log.verify_run(str(tmp_path))  # Every epsilon recomputed from the log.
  assert verified['epsilons_checked'] == ROUNDS * 4 and verified['models_checked'] == 1
  got, want = summary['privacy']['per_hospital'], reference['privacy']['per_hospital']
  assert {h: v['steps'] for h, v in got.items()} == {h: v['steps'] for h, v in want.items()}
  for h in want:
    assert got[h]['epsilon'] == pytest.approx(want[h]['epsilon'], rel=1e-12)
  assert summary['privacy']['epsilon'] == pytest.approx(reference['privacy']['epsilon'])
