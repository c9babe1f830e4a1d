"""The audit log's hash chain against an editor of the file: every change,
deletion, insertion, reordering or cut is detected and names the first bad line;
a resumed writer continues the chain; the Ed25519 signature binds the head.
The verifier against a hostile folder: it never loads a model (a Lambda layer's
code does not run) and refuses a logged model path outside the folder."""

import json
import os

import pytest
import tensorflow as tf

from tff_med import audit_log


def _log(tmp_path, n=6):
  log = audit_log.AuditLog(str(tmp_path / audit_log.LOG_FILE))
  for k in range(n):
    head = log.append('round', round=k + 1, epsilon={'north': 0.1 * k})
  return log, head


def _lines(log):
  with open(log.path) as f:
    return f.read().splitlines()


def _write(log, lines):
  with open(log.path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def test_an_untouched_log_verifies_and_a_resumed_writer_continues_it(tmp_path):
  log, head = _log(tmp_path, 3)
  resumed = audit_log.AuditLog(log.path)
  assert (resumed.seq, resumed.head) == (3, head)
  head = resumed.append('resumed', after_round=3)
  entries = audit_log.verify_chain(log.path, expected_head=head)
  assert [e['seq'] for e in entries] == [0, 1, 2, 3]
  assert entries[0]['prev'] == audit_log.GENESIS
  assert entries[3]['prev'] == audit_log.line_hash(_lines(log)[2])


def _changed(lines):
  entry = json.loads(lines[2])
  entry['epsilon']['north'] = 0.0  # A smaller epsilon than was spent.
  return lines[:2] + [json.dumps(entry, sort_keys=True)] + lines[3:]


@pytest.mark.parametrize('edit,bad_line', [
    (_changed, 4),                                      # prev of the next line breaks
    (lambda l: l[:2] + l[3:], 3),                        # a line deleted
    (lambda l: l[:1] + [l[2], l[1]] + l[3:], 2),        # two lines swapped
    (lambda l: l[:2] + [l[2]] + l[2:], 4),               # a line duplicated
    (lambda l: [l[0].replace('"round"', '"ROUND"')] + l[1:], 2),  # the first line changed
])
def test_every_edit_is_detected_at_the_first_bad_line(tmp_path, edit, bad_line):
  log, head = _log(tmp_path)
  _write(log, edit(_lines(log)))
  with pytest.raises(audit_log.AuditLogError, match=rf'line {bad_line}:'):
    audit_log.verify_chain(log.path, expected_head=head)
  with pytest.raises(audit_log.AuditLogError):
    audit_log.AuditLog(log.path)  # A writer refuses to extend a broken chain.


@pytest.mark.parametrize('edit', [
    lambda l: l[:-1],                                                # the last line cut
    lambda l: l[:-1] + [l[-1].replace('"round": 6', '"round": 7')],  # the last line changed
])
def test_the_end_of_the_log_is_bound_by_the_recorded_head(tmp_path, edit):
  log, head = _log(tmp_path)
  _write(log, edit(_lines(log)))
  audit_log.verify_chain(log.path)  # The chain alone cannot see it ...
  with pytest.raises(audit_log.AuditLogError, match='recorded head'):
    audit_log.verify_chain(log.path, expected_head=head)  # ... the head can.


def test_signature_binds_the_head_to_the_key(tmp_path):
  log, head = _log(tmp_path)
  public = audit_log.new_key(str(tmp_path / 'study.pem'))
  assert audit_log.sign_head(head, str(tmp_path / 'study.pem'), str(tmp_path)) == public
  assert audit_log.check_signature(str(tmp_path), head, public) == public
  with pytest.raises(audit_log.AuditLogError, match='signs head'):
    audit_log.check_signature(str(tmp_path), audit_log.line_hash('forged'), public)
  other = audit_log.new_key(str(tmp_path / 'other.pem'))
  with pytest.raises(audit_log.AuditLogError, match='not the expected'):
    audit_log.check_signature(str(tmp_path), head, other)
  signature_file = tmp_path / audit_log.SIGNATURE_FILE
  saved = json.loads(signature_file.read_text())
  saved['signature'] = ('00' if saved['signature'][:2] != '00' else '11') + saved['signature'][2:]
  signature_file.write_text(json.dumps(saved))
  with pytest.raises(audit_log.AuditLogError, match='does not verify'):
    audit_log.check_signature(str(tmp_path), head, public)
  with pytest.raises(ValueError, match='audit_key=.*not an Ed25519 key|cannot read'):
    (tmp_path / 'bad.pem').write_text('not a key')
    audit_log.sign_head(head, str(tmp_path / 'bad.pem'), str(tmp_path))


def _hostile_run(run_dir, model, path='saved_model', files_sha256=None):
  """A folder as a hostile writer with the code in hand leaves it: `model`
  exported to RUN_DIR/saved_model, a chain whose round and model_saved entries
  (naming `path`) hash it, summary.json recording the head."""
  run_dir.mkdir(exist_ok=True)
  model.save(run_dir / 'saved_model', save_format='tf')
  weights = audit_log.keras_weights_sha256(model)
  log = audit_log.AuditLog(str(run_dir / audit_log.LOG_FILE))
  log.append('round', round=1, model_sha256={'global': weights})
  log.append('model_saved', model='global', path=path, model_sha256=weights,
             files_sha256=files_sha256 or audit_log.export_sha256(str(run_dir), path))
  head = log.append('completed', session=1, after_round=1)
  (run_dir / 'summary.json').write_text(json.dumps({'status': 'completed',
                                                    'audit_log_sha256': head}))


def _no_loading(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f'the verifier deserialised a model: {args}')
  monkeypatch.setattr(tf.keras.models, 'load_model', refuse)
  monkeypatch.setattr(tf.saved_model, 'load', refuse)


def test_verifying_a_hostile_folder_runs_none_of_its_model_code(tmp_path):
  marker = tmp_path / 'pwned'
  inputs = tf.keras.Input((3,))
  touched = tf.keras.layers.Lambda(  # Keras rebuilds this from bytecode on loading.
      lambda x, m=str(marker): (__import__('os').system('touch ' + m), x)[1])(inputs)
  evil = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(touched))
  _hostile_run(tmp_path / 'run', evil)
  marker.unlink()  # Created while tracing at save time.
  result = audit_log.verify_run(str(tmp_path / 'run'))
  assert result['models_checked'] == 1  # Files and checkpoint weights hashed ...
  assert not marker.exists()            # ... without running the model's code.


@pytest.mark.parametrize('where', ['absolute', 'dotdot', 'symlink'])
def test_a_logged_model_outside_the_run_folder_is_refused(tmp_path, monkeypatch, where):
  outside = tmp_path / 'outside'
  model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
  model.save(outside, save_format='tf')
  run_dir = tmp_path / 'run'
  path = {'absolute': str(outside), 'dotdot': '../outside', 'symlink': 'linked'}[where]
  if where == 'symlink':
    run_dir.mkdir()
    os.symlink(outside, run_dir / 'linked')
  _hostile_run(run_dir, model, path, files_sha256='0' * 64)
  _no_loading(monkeypatch)
  with pytest.raises(audit_log.AuditLogError,
                     match='line 2: .*(outside the run folder|not a path relative)'):
    audit_log.verify_run(str(run_dir))
