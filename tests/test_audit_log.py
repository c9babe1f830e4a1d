"""The audit log's hash chain against an editor of the file: every change,
deletion, insertion, reordering or cut is detected and names the first bad line;
a resumed writer continues the chain; the Ed25519 signature binds the head."""

import json

import pytest

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
