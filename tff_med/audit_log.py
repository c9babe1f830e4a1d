"""`audit_log.jsonl`: a run's events as a SHA-256 hash chain.

One JSON object per line, keys sorted:

    {"event": "...", "prev": HEX, "seq": N, "time": "2026-...Z", ...payload}

`seq` counts lines from 0; `prev` is the SHA-256 of the previous line's bytes
(without its newline), 64 zeros for the first. The hash of the last line is the
log's head: a run writes it into summary.json (`audit_log_sha256`) and, with a
key, signs it with Ed25519 (`audit_log.sig`: signature and public key, hex).

What the chain proves: a line changed, deleted, inserted or moved breaks the
`prev` of the line after it; lines cut from the end are caught by the head
recorded elsewhere. Someone who can rewrite the whole file and summary.json can
rebuild a valid chain: only the signature (with a public key the reader already
trusts) or a head copied elsewhere at the time anchors it. Written by hand:
neither TFF nor the Python standard library offers an append-only hash-chained
log; hashing and signing are hashlib's and the `cryptography` package's.
"""

import datetime
import hashlib
import json
import math
import os
from collections.abc import Iterator

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
import dp_accounting
import numpy as np
import tensorflow as tf

from tff_med.outputs import json_safe
from tff_med.privacy import accounting

LOG_FILE = 'audit_log.jsonl'
SIGNATURE_FILE = 'audit_log.sig'
GENESIS = '0' * 64


class AuditLogError(ValueError):
  """The log is not a valid chain; the message names the first bad line (1-based)."""


def line_hash(line: str) -> str:
  return hashlib.sha256(line.encode()).hexdigest()


class AuditLog:
  """Appends hash-chained entries to `path`, continuing the chain already there
  (a resumed run). Refuses a file whose chain is broken."""

  def __init__(self, path: str):
    self.path = path
    self.seq, self.head = 0, GENESIS
    if os.path.exists(path):
      for self.seq, (line, _) in enumerate(_checked_lines(path), start=1):
        self.head = line_hash(line)

  def append(self, event: str, **payload) -> str:
    """Writes one entry; returns the new head."""
    entry = {**json_safe(payload), 'event': event, 'seq': self.seq, 'prev': self.head,
             'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec='milliseconds').replace('+00:00', 'Z')}
    line = json.dumps(entry, sort_keys=True, allow_nan=False)
    with open(self.path, 'a') as f:
      f.write(line + '\n')
      f.flush()
      os.fsync(f.fileno())
    self.seq, self.head = self.seq + 1, line_hash(line)
    return self.head

  def entries(self) -> list[dict]:
    return [entry for _, entry in _checked_lines(self.path)] if os.path.exists(self.path) else []


def _checked_lines(path: str) -> Iterator[tuple[str, dict]]:
  """(line, entry) for each line of the log at `path`, checking the chain."""
  previous = GENESIS
  with open(path) as f:
    for number, raw in enumerate(f, start=1):
      line = raw.rstrip('\n')
      where = f'{path}, line {number}'
      try:
        entry = json.loads(line)
      except json.JSONDecodeError as e:
        raise AuditLogError(f'{where}: not JSON ({e.msg})') from None
      if not isinstance(entry, dict) or entry.get('seq') != number - 1:
        raise AuditLogError(f'{where}: seq {entry.get("seq") if isinstance(entry, dict) else None}'
                            f', expected {number - 1} (a line deleted, inserted or moved)')
      if entry.get('prev') != previous:
        raise AuditLogError(f'{where}: prev does not match the hash of line {number - 1} '
                            '(that line was changed, or lines were deleted or moved)')
      previous = line_hash(line)
      yield line, entry


def verify_chain(path: str, expected_head: str | None = None) -> list[dict]:
  """The entries of the log at `path` after checking its chain and, given
  `expected_head`, that its last line hashes to it.

  Raises:
    AuditLogError: naming the first bad line, or the head mismatch.
  """
  entries, head = [], GENESIS
  for line, entry in _checked_lines(path):
    entries.append(entry)
    head = line_hash(line)
  if expected_head is not None and head != expected_head:
    raise AuditLogError(f'{path}: its last line (line {len(entries)}) hashes to {head[:16]}..., '
                        f'the recorded head is {expected_head[:16]}... (lines cut from the '
                        'end, or the last line changed)')
  return entries


def _private_key(key_path: str) -> ed25519.Ed25519PrivateKey:
  try:
    with open(key_path, 'rb') as f:
      key = serialization.load_pem_private_key(f.read(), password=None)
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f'audit_key={key_path}: cannot read an unencrypted PEM private key '
                     f'({e})') from None
  if not isinstance(key, ed25519.Ed25519PrivateKey):
    raise ValueError(f'audit_key={key_path}: not an Ed25519 key')
  return key


def public_key(key_path: str) -> str:
  """The public key (hex) of the Ed25519 private key at `key_path`; ValueError
  naming `audit_key` when it cannot be read."""
  return _private_key(key_path).public_key().public_bytes(
      serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign_head(head: str, key_path: str, output_dir: str) -> str:
  """Signs `head` with the Ed25519 private key (PEM, unencrypted) at `key_path`;
  writes audit_log.sig; returns the public key (hex)."""
  key, public = _private_key(key_path), public_key(key_path)
  with open(os.path.join(output_dir, SIGNATURE_FILE), 'w') as f:
    json.dump({'head': head, 'signature': key.sign(bytes.fromhex(head)).hex(),
               'public_key': public}, f, indent=2)
    f.write('\n')
  return public


def check_signature(output_dir: str, head: str, public_key: str | None = None) -> str:
  """Checks audit_log.sig against `head` and `public_key` (hex; None: the key in
  the file, which proves only that whoever wrote the file held that key);
  returns the public key used. Raises AuditLogError."""
  path = os.path.join(output_dir, SIGNATURE_FILE)
  with open(path) as f:
    saved = json.load(f)
  key_hex = public_key or saved['public_key']
  if public_key and public_key != saved['public_key']:
    raise AuditLogError(f'{path}: signed with key {saved["public_key"][:16]}..., not the '
                        f'expected {public_key[:16]}...')
  if saved['head'] != head:
    raise AuditLogError(f'{path}: signs head {saved["head"][:16]}..., the log ends at '
                        f'{head[:16]}...')
  try:
    ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
        bytes.fromhex(saved['signature']), bytes.fromhex(head))
  except Exception:  # cryptography raises InvalidSignature (or ValueError on bad bytes).
    raise AuditLogError(f'{path}: the signature does not verify') from None
  return key_hex


def new_key(path: str) -> str:
  """Writes a new Ed25519 private key (PEM, unencrypted, mode 0600) to `path`;
  returns its public key (hex)."""
  key = ed25519.Ed25519PrivateKey.generate()
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, 'wb') as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return key.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw).hex()


def weights_sha256(arrays) -> str:
  """SHA-256 over model weights [arrays] (trainable then non-trainable, each as
  float32 C-order bytes with its shape): equal weights, equal hash."""
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(np.asarray(array, np.float32))
    digest.update(str(array.shape).encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def keras_weights_sha256(model: tf.keras.Model) -> str:
  return weights_sha256([w.numpy() for w in model.trainable_weights + model.non_trainable_weights])


def _merge(counted: dict, added: dict) -> None:
  """Adds `added` ({view: {unit: [[event_json, count]]}}) into `counted` in place."""
  for view, units in added.items():
    for unit, events in units.items():
      total = counted.setdefault(view, {}).setdefault(unit, [])
      for event, count in events:
        for pair in total:
          if pair[0] == event:
            pair[1] += count
            break
        else:
          total.append([event, count])


def _close(a, b) -> bool:
  if a in ('inf', None) or b in ('inf', None):
    return a == b
  return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def verify_run(run_dir: str, public_key: str | None = None) -> dict:
  """Re-checks a run's audit log: the chain and its head against summary.json,
  the signature (if audit_log.sig exists, or `public_key` is given), every
  logged epsilon against dp_accounting run on the DP events logged up to it,
  and each saved model's weights against the hash logged for the last round.

  Returns {'entries', 'head', 'epsilons_checked', 'models_checked', 'signed_by'}.
  Raises:
    AuditLogError: naming the first line or file at fault.
  """
  path = os.path.join(run_dir, LOG_FILE)
  if not os.path.isfile(path):
    raise AuditLogError(f'{run_dir}: no {LOG_FILE}')
  summary_path = os.path.join(run_dir, 'summary.json')
  head = None
  if os.path.isfile(summary_path):
    with open(summary_path) as f:
      head = json.load(f).get('audit_log_sha256')
  entries = verify_chain(path, expected_head=head)
  head = head or (line_hash(_last_line(path)) if entries else GENESIS)
  signed_by = None
  if public_key or os.path.exists(os.path.join(run_dir, SIGNATURE_FILE)):
    if not os.path.exists(os.path.join(run_dir, SIGNATURE_FILE)):
      raise AuditLogError(f'{run_dir}: no {SIGNATURE_FILE}, but a signature by '
                          f'{public_key[:16]}... was expected')
    signed_by = check_signature(run_dir, head, public_key)
  counted, checked, last_models, models_checked = {}, 0, None, 0
  for number, entry in enumerate(entries, start=1):
    where = f'{path}, line {number}'
    _merge(counted, entry.get('dp_events', {}))
    for view, units in entry.get('epsilon', {}).items():
      for unit, logged in units.items():
        events = [dp_accounting.SelfComposedDpEvent(accounting.event_from_json(e), n)
                  for e, n in counted.get(view, {}).get(unit, [])]
        recomputed = json_safe(accounting.epsilon(events, entry['delta'], entry['accountant']))
        if not _close(logged, recomputed):
          raise AuditLogError(f'{where}: epsilon of {unit} against {view} is logged as '
                              f'{logged}, but the logged DP events give {recomputed}')
        checked += 1
    if entry['event'] == 'round':
      last_models = entry.get('model_sha256')
    if entry['event'] == 'model_saved':
      if last_models is None or entry['model_sha256'] != last_models.get(
          entry.get('model') or 'global'):
        raise AuditLogError(f'{where}: the saved model\'s hash is not the last round\'s')
      model = tf.keras.models.load_model(os.path.join(run_dir, entry['path']), compile=False)
      if keras_weights_sha256(model) != entry['model_sha256']:
        raise AuditLogError(f'{where}: {entry["path"]} holds other weights than logged')
      models_checked += 1
  return {'entries': len(entries), 'head': head, 'epsilons_checked': checked,
          'models_checked': models_checked, 'signed_by': signed_by}


def _last_line(path: str) -> str:
  with open(path) as f:
    return f.read().splitlines()[-1]
