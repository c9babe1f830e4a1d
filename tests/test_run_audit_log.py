"""Every training run writes audit_log.jsonl, and the verifier catches an editor
who rewrites it with the code in hand: a lower epsilon with the chain and the
head rebuilt, a consistent rewrite of events and epsilons under a signature, a
swapped model (global or personalised; its weights, serving signature or
feature schema), a forged privacy headline in summary.json, and a downgrade (no
summary.json, no head, no signature where the summary names a key). A resumed
run continues the same chain (also checked after kill -9 in test_resume.py)."""

import dataclasses

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from tff_med import audit_log, serving, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.personalization import PersonalizeConfig
from tff_med.privacy import dp_sgd
from tff_med.privacy.dp_account import PrivacyConfig

from test_round_loop import BATCH, SIZES, _data, _keras  # The same toy study.

ROUNDS, SIGMA, DELTA = 3, 1.0, 1e-3
_CONFIG = training.TrainConfig(
    AlgorithmConfig('fedavg', client_lr=0.3, client_weighting='uniform'), rounds=ROUNDS,
    batch_size=BATCH, eval_every=ROUNDS,
    privacy=PrivacyConfig('record', noise_multiplier=SIGMA, target_delta=DELTA),
    personalize=PersonalizeConfig('finetune', epochs=1))


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
      'started', 'round', 'round', 'round', 'model_saved', 'personalization_charged',
      *['model_saved'] * len(SIZES), 'personalized', 'completed']
  assert [e['path'] for e in entries if e['event'] == 'model_saved'] == [
      'saved_model', *[f'personalized_model/{h}' for h in SIZES]]
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
  # Epsilons after each round and the fine-tuning's two entries; the global and
  # every personalised model.
  assert result == {'entries': len(entries), 'head': summary['audit_log_sha256'],
                    'epsilons_checked': 5 * len(SIZES), 'models_checked': 1 + len(SIZES),
                    'signed_by': public}


def _rewrite(run_dir, edit, drop_key=False):
  """An editor without the key: applies `edit` to the entries, rebuilds every
  seq/prev and the head in summary.json (`drop_key`: and removes the key it
  names, an unsigned run)."""
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
  if drop_key:
    del summary['audit_log_public_key']
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

  _rewrite(run_dir, lower, drop_key=True)
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


def _negated_scales(path):
  """Re-exports the model at `path` with every feature scale negated: the same
  Keras weights, other predictions (the signature applies the schema)."""
  before = serving.ServingModel(str(path))
  schema = dataclasses.replace(before.schema, features=tuple(
      dataclasses.replace(f, scale=-f.scale) for f in before.schema.features))
  model = tf.keras.models.load_model(path, compile=False)
  columns = {c: np.array([1.0, -2.0, 0.5]) for c in before.schema.columns}
  serving.export(model, schema, str(path), before.preprocessing)
  assert not np.allclose(before.predict(columns),
                         serving.ServingModel(str(path)).predict(columns))


def _schema_edited(path):
  schema = json.loads((path / serving.SCHEMA_FILE).read_text())
  schema['schema']['features'][0]['scale'] *= -1
  (path / serving.SCHEMA_FILE).write_text(json.dumps(schema))


def _weights_moved(path):
  model = tf.keras.models.load_model(path, compile=False)
  model.set_weights([w + 0.5 for w in model.get_weights()])
  model.save(path, save_format='tf')


@pytest.mark.parametrize('folder,edit', [
    ('saved_model', _weights_moved),
    ('saved_model', _negated_scales),           # saved_model.pb's serving signature
    ('saved_model', _schema_edited),            # feature_schema.json
    ('personalized_model/h0', _weights_moved),  # a personalised model's variables
    ('personalized_model/h2', _schema_edited),
])
def test_a_swapped_model_is_caught(signed_run, tmp_path, folder, edit):
  run_dir, _, public = signed_run
  run_dir = _copy(run_dir, tmp_path)
  edit(run_dir / folder)
  with pytest.raises(audit_log.AuditLogError,
                     match=rf'line \d+: the files of {folder} .* differ from those logged'):
    audit_log.verify_run(str(run_dir), public)


def test_a_swapped_model_with_its_file_hash_rebuilt_fails_the_weights_check(signed_run,
                                                                            tmp_path):
  """Unsigned, the editor can log the new files' hash; the weights read from
  the checkpoint are still not the last round's."""
  run_dir = _copy(signed_run[0], tmp_path)
  os.remove(run_dir / audit_log.SIGNATURE_FILE)
  _weights_moved(run_dir / 'saved_model')

  def rehash(entry):
    if entry['event'] == 'model_saved' and entry['path'] == 'saved_model':
      entry['files_sha256'] = audit_log.export_sha256(str(run_dir), 'saved_model')
    return entry

  _rewrite(run_dir, rehash, drop_key=True)
  with pytest.raises(audit_log.AuditLogError,
                     match=r'line \d+: saved_model holds other weights than logged'):
    audit_log.verify_run(str(run_dir))


def test_an_export_the_log_does_not_record_is_caught(signed_run, tmp_path):
  run_dir, _, public = signed_run
  run_dir = _copy(run_dir, tmp_path)
  subprocess.run(['cp', '-r', str(run_dir / 'personalized_model' / 'h0'),
                  str(run_dir / 'personalized_model' / 'h9')], check=True)
  with pytest.raises(audit_log.AuditLogError, match=r'personalized_model/h9: a model export '
                                                    'the audit log does not record'):
    audit_log.verify_run(str(run_dir), public)


def _forge(summary):
  """The headline lowered everywhere an editor would, statement included."""
  privacy = summary['privacy']
  privacy['epsilon'] = 0.1
  privacy['per_hospital'] = {h: {**v, 'epsilon': 0.1} for h, v in privacy['per_hospital'].items()}
  privacy['statement'] = '(ε=0.1, δ=0.001)-DP for each patient record'


def _set(field, value):
  def edit(summary):
    *path, last = field.split('.')
    block = summary['privacy']
    for key in path:
      block = block[key]
    block[last] = value
  return edit


@pytest.mark.parametrize('edit,field', [
    (_set('epsilon', 0.1), 'epsilon'),
    (_set('per_hospital.h3.epsilon', 0.1), 'per_hospital.h3.epsilon'),
    (_set('delta', 1e-9), 'delta'),
    (_set('adversaries.everyone.epsilon', 0.1), 'adversaries.everyone.epsilon'),
    (_set('patient_at_every_hospital_epsilon', 0.1), 'patient_at_every_hospital_epsilon'),
    (_set('substitution.epsilon', 0.2), 'substitution.epsilon'),
    (_set('statement', '(ε=0.1, δ=0.001)-DP'), 'statement says ε=0.1'),
    (_forge, 'epsilon'),  # per-hospital epsilons and the statement forged as well
])
def test_a_forged_privacy_headline_is_caught_even_with_the_trusted_key(
    signed_run, tmp_path, edit, field):
  run_dir, _, public = signed_run
  run_dir = _copy(run_dir, tmp_path)
  summary = json.loads((run_dir / 'summary.json').read_text())
  edit(summary)
  (run_dir / 'summary.json').write_text(json.dumps(summary))
  with pytest.raises(audit_log.AuditLogError,
                     match=rf'summary.json: privacy.{re.escape(field)}'):
    audit_log.verify_run(str(run_dir), public)


def _cut_after_rounds(run_dir):
  """The log cut before the first model_saved (fine-tuning and all), with the
  head in summary.json rebuilt; signature, named key and the exports removed."""
  shutil.rmtree(run_dir / 'saved_model')
  shutil.rmtree(run_dir / 'personalized_model')
  lines = (run_dir / audit_log.LOG_FILE).read_text().splitlines()
  cut = [json.loads(line)['event'] for line in lines].index('model_saved')
  (run_dir / audit_log.LOG_FILE).write_text('\n'.join(lines[:cut]) + '\n')
  summary = json.loads((run_dir / 'summary.json').read_text())
  summary['audit_log_sha256'] = audit_log.line_hash(lines[cut - 1])
  del summary['audit_log_public_key']
  (run_dir / 'summary.json').write_text(json.dumps(summary))
  os.remove(run_dir / audit_log.SIGNATURE_FILE)


def _no_head(run_dir):  # The reviewer's truncation: cut, no signature, no head, key left.
  lines = (run_dir / audit_log.LOG_FILE).read_text().splitlines()
  (run_dir / audit_log.LOG_FILE).write_text('\n'.join(lines[:-5]) + '\n')
  os.remove(run_dir / audit_log.SIGNATURE_FILE)
  summary = json.loads((run_dir / 'summary.json').read_text())
  del summary['audit_log_sha256']
  (run_dir / 'summary.json').write_text(json.dumps(summary))


@pytest.mark.parametrize('downgrade,error', [
    (lambda d: os.remove(d / 'summary.json'), r'no summary.json'),
    (_no_head, r'summary.json: no audit_log_sha256'),
    (lambda d: os.remove(d / audit_log.SIGNATURE_FILE),
     r'no audit_log.sig, but a signature by [0-9a-f]{16}\.\.\. was expected '
     r'\(summary.json\'s audit_log_public_key\)'),
    (_cut_after_rounds, r"summary.json: status 'completed', but the log ends with 'release'"),
])
def test_a_downgraded_folder_is_refused(signed_run, tmp_path, downgrade, error):
  run_dir = _copy(signed_run[0], tmp_path)
  downgrade(run_dir)
  with pytest.raises(audit_log.AuditLogError, match=error):
    audit_log.verify_run(str(run_dir))  # No --public_key: what the folder says is all.


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
  ok = _verify(str(run_dir))  # Checked against the key the folder names: it says so.
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'audit log verified' in ok.stdout and f'signed by {public[:16]}...' in ok.stdout
  assert (f'warning: the signature was checked against the key {public[:16]}... that the '
          'folder itself names') in ok.stderr
  run_dir = _copy(run_dir, tmp_path)
  lines = (run_dir / audit_log.LOG_FILE).read_text().splitlines()
  lines[2], lines[3] = lines[3], lines[2]
  (run_dir / audit_log.LOG_FILE).write_text('\n'.join(lines) + '\n')
  bad = _verify(str(run_dir), f'--public_key={public}')
  assert bad.returncode == 1
  assert bad.stderr.startswith('error: ') and 'line 3:' in bad.stderr, bad.stderr


def _verify(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.verify_audit_log', *args],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
