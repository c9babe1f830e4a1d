"""Every training run writes audit_log.jsonl, and the verifier catches an editor
who rewrites it with the code in hand: a lower epsilon with the chain and the
head rebuilt, a consistent rewrite of events and epsilons under a signature, a
swapped model. A resumed run continues the same chain (also checked after
kill -9 in test_resume.py)."""

import hashlib
import hmac
import json
import os
import subprocess
import sys

import dp_accounting
import pytest
import tensorflow as tf

from tff_med import audit_log, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.privacy import dp_sgd
from tff_med.privacy.dp_account import PrivacyConfig

from test_round_loop import BATCH, SIZES, _data, _keras  # The same toy study.

ROUNDS, SIGMA, DELTA = 3, 1.0, 1e-3
_CONFIG = training.TrainConfig(
    AlgorithmConfig('fedavg', client_lr=0.3, client_weighting='uniform'), rounds=ROUNDS,
    batch_size=BATCH, eval_every=ROUNDS,
    privacy=PrivacyConfig('record', noise_multiplier=SIGMA, target_delta=DELTA))


@pytest.fixture(scope='module')
def signed_run(tmp_path_factory):
  folder = tmp_path_factory.mktemp('signed')
  public = audit_log.new_key(str(folder / 'study.pem'))
  run_dir = folder / 'run'
  summary = training.run(_data(), _keras, _CONFIG, str(run_dir), log=lambda _: None,
                         audit_key=str(folder / 'study.pem'))
  return run_dir, summary, public


def _entries(run_dir):
  with open(run_dir / audit_log.LOG_FILE) as f:
    return [json.loads(line) for line in f]


def test_the_log_records_the_run_and_the_verifier_recomputes_it(signed_run):
  run_dir, summary, public = signed_run
  entries = _entries(run_dir)
  assert [e['event'] for e in entries if e['event'] != 'release'] == [
      'started', 'round', 'round', 'round', 'model_saved', 'completed']
  started = entries[0]
  assert started['config']['privacy']['noise_multiplier'] == SIGMA
  assert set(started['data']['hospitals']) == set(SIZES)
  assert started['data']['hospitals']['h1']['train_rows'] == 16
  # The data fingerprint is keyed: a reader of the log cannot test guesses of a
  # record against it; the key stays in program_state/ (not released).
  x, y = _data().train_arrays('h1')
  plain = hashlib.sha256(x.tobytes() + y.tobytes() + _data().test['h1'][0].tobytes()
                         + _data().test['h1'][1].tobytes()).hexdigest()
  key = bytes.fromhex((run_dir / 'program_state' / 'fingerprint_key').read_text())
  keyed = hmac.new(key, x.tobytes() + y.tobytes() + _data().test['h1'][0].tobytes()
                   + _data().test['h1'][1].tobytes(), hashlib.sha256).hexdigest()
  assert started['data']['hospitals']['h1']['hmac_sha256'] == keyed != plain
  assert 'sha256' not in started['data']['hospitals']['h1']
  assert 'tensorflow-federated' in started['versions']
  # The last round's epsilon: dp_accounting called here on the DP-SGD event of all rounds.
  last = [e for e in entries if e['event'] == 'round'][-1]
  for h, n in SIZES.items():
    steps = ROUNDS * dp_sgd.local_steps(n, BATCH, 1)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(
        BATCH / n, dp_accounting.GaussianDpEvent(SIGMA)), steps)
    assert last['epsilon']['everyone'][h] == pytest.approx(accountant.get_epsilon(DELTA),
                                                           rel=1e-6)
  result = audit_log.verify_run(str(run_dir), public)
  assert result == {'entries': len(entries), 'head': summary['audit_log_sha256'],
                    'epsilons_checked': 3 * len(SIZES), 'models_checked': 1,
                    'signed_by': public}


def _rewrite(run_dir, edit):
  """An editor without the key: applies `edit` to the entries, rebuilds every
  seq/prev and the head in summary.json."""
  entries = [edit(e) for e in _entries(run_dir)]
  os.remove(run_dir / audit_log.LOG_FILE)
  log = audit_log.AuditLog(str(run_dir / audit_log.LOG_FILE))
  for entry in entries:
    event = entry.pop('event')
    for key in ('seq', 'prev', 'time'):
      entry.pop(key)
    log.append(event, **entry)
  summary = json.loads((run_dir / 'summary.json').read_text())
  summary['audit_log_sha256'] = log.head
  (run_dir / 'summary.json').write_text(json.dumps(summary))


def _copy(run_dir, tmp_path):
  subprocess.run(['cp', '-r', str(run_dir), str(tmp_path / 'copy')], check=True)
  return tmp_path / 'copy'


def test_a_lower_epsilon_with_the_chain_rebuilt_fails_the_recomputation(signed_run, tmp_path):
  run_dir = _copy(signed_run[0], tmp_path)
  os.remove(run_dir / audit_log.SIGNATURE_FILE)  # Unsigned: only the recomputation is left.

  def lower(entry):
    if entry['event'] == 'round' and entry['round'] == 3:
      entry['epsilon']['everyone']['h0'] /= 2
    return entry

  _rewrite(run_dir, lower)
  with pytest.raises(audit_log.AuditLogError,
                     match=r'line \d+: epsilon of h0 against everyone is logged as'):
    audit_log.verify_run(str(run_dir))


def test_a_consistent_rewrite_is_caught_by_the_signature(signed_run, tmp_path):
  run_dir, _, public = signed_run
  run_dir = _copy(run_dir, tmp_path)

  def drop_round_3(entry):  # Its events and every later epsilon, rewritten to agree.
    if entry['event'] == 'round' and entry['round'] == 3:
      entry['dp_events'], entry['epsilon'] = {}, previous['epsilon']
    if entry['event'] == 'round':
      previous['epsilon'] = entry['epsilon']
    return entry

  previous = {}
  _rewrite(run_dir, drop_round_3)
  with pytest.raises(audit_log.AuditLogError, match='signs head'):
    audit_log.verify_run(str(run_dir), public)


def test_a_swapped_model_is_caught(signed_run, tmp_path):
  run_dir = _copy(signed_run[0], tmp_path)
  model = tf.keras.models.load_model(run_dir / 'saved_model', compile=False)
  model.set_weights([w + 0.5 for w in model.get_weights()])
  model.save(run_dir / 'saved_model', save_format='tf')
  with pytest.raises(audit_log.AuditLogError, match='holds other weights than logged'):
    audit_log.verify_run(str(run_dir))


def test_a_resumed_run_continues_the_chain(tmp_path):
  config = training.TrainConfig(AlgorithmConfig('fedavg', client_lr=0.3), rounds=2,
                                batch_size=BATCH, eval_every=2)
  first = training.run(_data(), _keras, config, str(tmp_path), log=lambda _: None)
  again = training.run(_data(), _keras, config, str(tmp_path), log=lambda _: None)
  events = [e['event'] for e in _entries(tmp_path)]
  assert events.count('started') == 1 and events.count('resumed') == 1
  assert again['audit_log_sha256'] != first['audit_log_sha256']
  assert audit_log.verify_run(str(tmp_path))['head'] == again['audit_log_sha256']


def test_verifier_binary_exit_codes(signed_run, tmp_path):
  run_dir, _, public = signed_run
  ok = _verify(str(run_dir), f'--public_key={public}')
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'audit log verified' in ok.stdout and 'signed by' in ok.stdout
  run_dir = _copy(run_dir, tmp_path)
  lines = (run_dir / audit_log.LOG_FILE).read_text().splitlines()
  lines[2], lines[3] = lines[3], lines[2]
  (run_dir / audit_log.LOG_FILE).write_text('\n'.join(lines) + '\n')
  bad = _verify(str(run_dir))
  assert bad.returncode == 1
  assert bad.stderr.startswith('error: ') and 'line 3:' in bad.stderr, bad.stderr


def _verify(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.verify_audit_log', *args],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
