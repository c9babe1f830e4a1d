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
import functools
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
import dp_accounting
from google.protobuf.message import DecodeError
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

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


# Where a run exports models (`outputs.RunOutputs.save_models`; `personalization.FOLDER`).
MODEL_FOLDER, PERSONALIZED_FOLDER = 'saved_model', 'personalized_model'
_MODEL_FILE = 'saved_model.pb'


def _inside(run_dir: str, path) -> str:
  """The real path of `path` (relative, from the log) inside `run_dir`;
  AuditLogError for an absolute path or one that leaves the folder (through
  '..' or a symbolic link)."""
  if not isinstance(path, str) or not path or os.path.isabs(path):
    raise AuditLogError(f'{path!r}: not a path relative to the run folder')
  root = os.path.realpath(run_dir)
  full = os.path.realpath(os.path.join(root, path))
  if full == root or os.path.commonpath([root, full]) != root:
    raise AuditLogError(f'{path!r}: outside the run folder {run_dir}')
  return full


def export_sha256(run_dir: str, path: str) -> str:
  """SHA-256 of the model export at RUN_DIR/PATH (`path` relative), as it is on
  disk, without loading it: over every file below it (saved_model.pb with the
  serving signature, keras_metadata.pb, fingerprint.pb, variables/*,
  feature_schema.json) in sorted relative-path order ('/'-separated), each as
  'PATH NUL SIZE NUL' then its bytes. AuditLogError for a symbolic link or
  anything else that is not a folder or a regular file."""
  root = _inside(run_dir, path)
  if not os.path.isfile(os.path.join(root, _MODEL_FILE)):
    raise AuditLogError(f'{path}: no {_MODEL_FILE}, not a model export')
  files = []
  for folder, dirs, names in os.walk(root):
    for name in dirs + names:
      mode = os.lstat(os.path.join(folder, name)).st_mode
      if not (stat.S_ISDIR(mode) if name in dirs else stat.S_ISREG(mode)):
        raise AuditLogError(f'{os.path.join(path, os.path.relpath(folder, root), name)}: '
                            'a link or special file in a model export')
    files += [os.path.relpath(os.path.join(folder, n), root).replace(os.sep, '/')
              for n in names]
  digest = hashlib.sha256()
  for name in sorted(files):
    with open(os.path.join(root, name), 'rb') as f:
      digest.update(f'{name}\0{os.fstat(f.fileno()).st_size}\0'.encode())
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()


def export_weights_sha256(export_dir: str) -> str:
  """`keras_weights_sha256` of the Keras SavedModel at `export_dir`, read from
  its checkpoint (variables/variables) with `tf.train.load_checkpoint`: the
  model is never deserialised, so none of its code runs. Order: the checkpoint's
  object graph root lists `trainable_variables` and `variables` (every weight,
  in layer order); the trainable ones, then the rest of `variables` in that
  order (Keras' trainable_weights + non_trainable_weights)."""
  try:
    reader = tf.train.load_checkpoint(os.path.join(export_dir, 'variables', 'variables'))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))

    def listed(name: str) -> list[str]:
      lists = [c.node_id for c in graph.nodes[0].children if c.local_name == name]
      children = sorted(graph.nodes[lists[0]].children, key=lambda c: int(c.local_name))
      return [next(a.checkpoint_key for a in graph.nodes[c.node_id].attributes
                   if a.name == 'VARIABLE_VALUE') for c in children]

    trainable = listed('trainable_variables')
    keys = trainable + [k for k in listed('variables') if k not in trainable]
    return weights_sha256([reader.get_tensor(k) for k in keys])
  except (tf.errors.OpError, DecodeError, IndexError, StopIteration, ValueError) as e:
    raise AuditLogError(f'{export_dir}: cannot read the Keras weights from its checkpoint '
                        f'({type(e).__name__}: {e})') from None


def model_saved(run_dir: str, path: str, model_sha256: str, **fields) -> dict:
  """The payload of a `model_saved` entry for the export at RUN_DIR/PATH:
  `fields` (e.g. model=name), its folder, the SHA-256 of its weights and of its
  files (`export_sha256`)."""
  return {**fields, 'path': path, 'model_sha256': model_sha256,
          'files_sha256': export_sha256(run_dir, path)}


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


def _epsilon(counted: dict, view: str, units, delta: float, accountant: str):
  """Epsilon (JSON) of the DP events `counted` for `units` of `view`, composed."""
  return _composed(json.dumps([pair for unit in units
                               for pair in counted.get(view, {}).get(unit, [])]),
                   delta, accountant)


@functools.lru_cache(maxsize=4096)
def _composed(events_json: str, delta: float, accountant: str):
  """Epsilon (JSON) of [[event as JSON, count]] (`events_json`), composed; cached:
  a log verified again, or one sharing another's events, is not recomputed."""
  events = [dp_accounting.SelfComposedDpEvent(accounting.event_from_json(e), n)
            for e, n in json.loads(events_json)]
  return json_safe(accounting.epsilon(events, delta, accountant))


def _summary(run_dir: str) -> dict:
  """summary.json of `run_dir`, which must exist and record the log's head."""
  path = os.path.join(run_dir, 'summary.json')
  if not os.path.isfile(path):
    raise AuditLogError(f'{run_dir}: no summary.json: a run writes it (with the log\'s head) '
                        'when it completes or is interrupted; a folder without one was killed '
                        'mid-run or had it removed, and cannot be verified')
  try:
    with open(path) as f:
      summary = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AuditLogError(f'{path}: not JSON ({e})') from None
  if not isinstance(summary, dict) or not isinstance(summary.get('audit_log_sha256'), str):
    raise AuditLogError(f'{path}: no audit_log_sha256 (the head of the log it summarises)')
  return summary


def _signature(run_dir: str, head: str, public_key: str | None, named: str | None) -> str | None:
  """The key that signed `head` (None: unsigned). The signature is required
  where `public_key` is given or summary.json names a key (`named`); without
  `public_key` it is checked against the key the folder names."""
  expected = public_key or named
  if not expected and not os.path.exists(os.path.join(run_dir, SIGNATURE_FILE)):
    return None
  if not os.path.exists(os.path.join(run_dir, SIGNATURE_FILE)):
    raise AuditLogError(f'{run_dir}: no {SIGNATURE_FILE}, but a signature by {expected[:16]}... '
                        'was expected (' + ('--public_key' if public_key else
                                            'summary.json\'s audit_log_public_key') + ')')
  if public_key and named and named != public_key:
    raise AuditLogError(f'{run_dir}/summary.json: audit_log_public_key {named[:16]}... is not '
                        f'the expected {public_key[:16]}...')
  return check_signature(run_dir, head, expected)


def verify_run(run_dir: str, public_key: str | None = None) -> dict:
  """Re-checks a run's folder against its audit log, never loading a model:

  - summary.json exists and its `audit_log_sha256` is the head of an unbroken
    chain;
  - audit_log.sig signs that head, required where `public_key` is given or
    summary.json names `audit_log_public_key` (without `public_key` it is
    checked against that named key, which proves only that whoever wrote the
    folder held it);
  - every logged epsilon equals dp_accounting's over the DP events logged up to
    it;
  - summary.json's `status` is the log's last event, and its privacy block
    (accountant, delta, epsilon, epsilon_adversary, per_hospital, each
    adversary's epsilon and per_unit, substitution,
    patient_at_every_hospital_epsilon, and every 'ε=' / 'δ=' number of its
    statement) equals the last logged epsilons (no DP logged: epsilon 'inf'
    for privacy.level none, else 0);
  - each `model_saved` entry names a folder inside `run_dir`; a global or
    hospital model's weights hash is the last round's; the last entry per
    folder matches the export on disk: its files (`export_sha256`: serving
    signature, feature_schema.json, variables) and the weights read from its
    checkpoint (`export_weights_sha256`);
  - every export under saved_model/ and personalized_model/ has such an entry.

  Returns {'entries', 'head', 'epsilons_checked', 'models_checked', 'signed_by'}.
  Raises:
    AuditLogError: naming the first line or file at fault.
  """
  path = os.path.join(run_dir, LOG_FILE)
  if not os.path.isfile(path):
    raise AuditLogError(f'{run_dir}: no {LOG_FILE}')
  summary = _summary(run_dir)
  head = summary['audit_log_sha256']
  entries = verify_chain(path, expected_head=head)
  signed_by = _signature(run_dir, head, public_key, summary.get('audit_log_public_key'))
  counted, checked, last_models, last_dp, saved = {}, 0, None, None, {}
  for number, entry in enumerate(entries, start=1):
    where = f'{path}, line {number}'
    _merge(counted, entry.get('dp_events', {}))
    for view, units in entry.get('epsilon', {}).items():
      for unit, logged in units.items():
        recomputed = _epsilon(counted, view, [unit], entry['delta'], entry['accountant'])
        if not _close(logged, recomputed):
          raise AuditLogError(f'{where}: epsilon of {unit} against {view} is logged as '
                              f'{logged}, but the logged DP events give {recomputed}')
        checked += 1
    if 'epsilon' in entry:
      last_dp = (number, entry)
    if entry['event'] == 'round':
      last_models = entry.get('model_sha256')
    if entry['event'] == 'model_saved':
      try:
        folder = os.path.relpath(_inside(run_dir, entry.get('path')),
                                 os.path.realpath(run_dir))
      except AuditLogError as e:
        raise AuditLogError(f'{where}: model path {e}') from None
      if folder.split(os.sep)[0] != PERSONALIZED_FOLDER and (
          last_models is None or entry.get('model_sha256') != last_models.get(
              entry.get('model') or 'global')):
        raise AuditLogError(f'{where}: the saved model\'s hash is not the last round\'s')
      saved[folder] = (where, entry)
  for folder, (where, entry) in saved.items():
    if export_sha256(run_dir, folder) != entry.get('files_sha256'):
      raise AuditLogError(f'{where}: the files of {entry["path"]} (serving signature, '
                          'feature_schema.json, variables) differ from those logged')
    if export_weights_sha256(os.path.join(run_dir, folder)) != entry.get('model_sha256'):
      raise AuditLogError(f'{where}: {entry["path"]} holds other weights than logged')
  _check_exports(run_dir, saved)
  summary_path = os.path.join(run_dir, 'summary.json')
  if summary.get('status') != (entries[-1]['event'] if entries else None):
    raise AuditLogError(f'{summary_path}: status {summary.get("status")!r}, but the log ends '
                        f'with {entries[-1]["event"] if entries else "nothing"!r}')
  _check_privacy(summary_path, summary.get('privacy'), last_dp, counted)
  return {'entries': len(entries), 'head': head, 'epsilons_checked': checked,
          'models_checked': len(saved), 'signed_by': signed_by}


def _check_exports(run_dir: str, saved: dict) -> None:
  """AuditLogError naming a model export under saved_model/ or
  personalized_model/ that no `model_saved` entry covers."""
  for top in (MODEL_FOLDER, PERSONALIZED_FOLDER):
    for folder, _, names in os.walk(os.path.join(run_dir, top)):
      export = os.path.relpath(folder, run_dir)
      if _MODEL_FILE in names and export not in saved:
        raise AuditLogError(f'{os.path.join(run_dir, export)}: a model export the audit log '
                            'does not record (no model_saved entry)')


def _check_privacy(path: str, privacy, last_dp: tuple | None, counted: dict) -> None:
  """AuditLogError naming the first field of summary.json's privacy block that
  differs from the last epsilons the log records (`last_dp`: (line, entry),
  each epsilon already recomputed) or from what follows from them."""
  where = f' (line {last_dp[0]})' if last_dp else ''

  def check(field: str, said, expected) -> None:
    if not _same(said, expected):
      raise AuditLogError(f'{path}: privacy.{field} is {said!r}, but the audit log gives '
                          f'{expected!r}{where}')

  if not isinstance(privacy, dict):
    if last_dp:
      raise AuditLogError(f'{path}: no privacy block, but the audit log records DP epsilons')
    return
  if last_dp is None:
    check('epsilon', privacy.get('epsilon'), 'inf' if privacy.get('level') == 'none' else 0.0)
    return
  entry = last_dp[1]
  delta, logged = entry['delta'], entry['epsilon']
  worst = {view: max(units.values(), key=_number) for view, units in logged.items()}
  headline = max(worst.values(), key=_number)
  check('accountant', privacy.get('accountant'), entry['accountant'])
  check('delta', privacy.get('delta'), delta)
  check('epsilon', privacy.get('epsilon'), headline)
  adversary = privacy.get('epsilon_adversary')
  if not isinstance(adversary, str) or adversary not in logged or not _same(
      worst[adversary], headline):
    raise AuditLogError(f'{path}: privacy.epsilon_adversary is {adversary!r}, but the '
                        f'largest epsilon the audit log gives is against '
                        f'{[v for v in logged if _same(worst[v], headline)]}{where}')
  adversaries = _dict(privacy.get('adversaries'))
  for field, block, units in [('per_hospital', privacy.get('per_hospital'), logged[adversary])] + [
      (f'adversaries.{view}.per_unit', _dict(adversaries.get(view)).get('per_unit'), units)
      for view, units in logged.items()]:
    block = _dict(block)
    check(f'{field} (hospitals)', sorted(block), sorted(units))
    for unit, eps in units.items():
      check(f'{field}.{unit}.epsilon', _dict(block[unit]).get('epsilon'), eps)
      check(f'{field}.{unit}.delta', _dict(block[unit]).get('delta'), delta)
  for view in logged:
    check(f'adversaries.{view}.epsilon', _dict(adversaries.get(view)).get('epsilon'),
          worst[view])
  substitution = json_safe(accounting.substitution_bound(_number(headline), delta))
  for name, value in zip(('epsilon', 'delta'), substitution):
    check(f'substitution.{name}', _dict(privacy.get('substitution')).get(name), value)
  known = {'ε': [*worst.values(), substitution[0]], 'δ': [delta, substitution[1]]}
  if 'patient_at_every_hospital_epsilon' in privacy:
    joint = _epsilon(counted, 'everyone', counted.get('everyone', {}), delta,
                     entry['accountant'])
    check('patient_at_every_hospital_epsilon', privacy['patient_at_every_hospital_epsilon'],
          joint)
    known['ε'].append(joint)
  # The statement, in words: each number it gives as 'ε=' or 'δ=' must be one of
  # those above as written (3 significant digits, or %g), the headline among them.
  statement = str(privacy.get('statement'))
  written = {symbol: {f'{_number(x):{spec}}' for x in values for spec in ('.3g', 'g')}
             for symbol, values in known.items()}
  for symbol, number in re.findall(r'(ε|δ)=([-+.\w]+)', statement):
    if number not in written[symbol]:
      raise AuditLogError(f'{path}: privacy.statement says {symbol}={number}, which is none '
                          'of the values the audit log gives '
                          f'({", ".join(sorted(written[symbol]))}){where}')
  if math.isfinite(_number(headline)) and f'ε={_number(headline):.3g}' not in statement:
    raise AuditLogError(f'{path}: privacy.statement does not state the logged epsilon '
                        f'ε={_number(headline):.3g}{where}')


def _dict(value) -> dict:
  return value if isinstance(value, dict) else {}


def _same(said, expected) -> bool:
  """`said` (from summary.json) equals `expected`: numbers (or 'inf') by `_close`."""
  if expected == 'inf' or isinstance(expected, (int, float)) and not isinstance(expected, bool):
    try:
      return _close(said, expected)
    except (TypeError, ValueError):
      return False
  return said == expected


def _number(value) -> float:
  """A JSON epsilon (a number, or 'inf') as a float."""
  return math.inf if value == 'inf' else float(value)
