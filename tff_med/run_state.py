"""What lets a run continue where it stopped: program state and the audit log.

Under `output_dir`:

    program_state/program_state_K/  the state after round K
                                    (`program_state.NumpyProgramStateManager`):
                                    the plan's process state (model, optimizer,
                                    aggregator), K, and a JSON document with the
                                    plan's checkpoint (e.g. the privacy ledger),
                                    the seeded generator's state (cohorts,
                                    dropouts), releases not yet made and the
                                    evaluation history; versions after the
                                    last round hold steps after training
                                    (personalisation: its DP charge, saved
                                    before it runs, and its result)
    program_state/run.json          the config and data fingerprint it belongs to
    audit_log.jsonl                 the hash-chained audit log (`tff_med.audit_log`):
                                    one entry per session event (started,
                                    resumed, interrupted, completed,
                                    personalization_charged, personalized),
                                    per round, per release and per saved model

program_state/ is the server's own state: it is not a release (its file times
show when each round ended). A round's state is saved before anything of the
round is released, so a folder whose audit log shows a round beyond its
saved state lost state (the ledger with it): it is refused.
"""

import asyncio
import glob
import hashlib
import hmac
import json
import os
import secrets
import shutil

import tensorflow as tf

from tff_med import audit_log
from tff_med.data.federated_data import FederatedData
from tff_med.outputs import TENSORBOARD_DIR, json_safe
from tff_med.program_state import NumpyProgramStateManager

STATE_DIR = 'program_state'
AUDIT_FILE = audit_log.LOG_FILE
# Everything a run writes under its folder (what overwrite=True deletes).
OUTPUTS = (STATE_DIR, AUDIT_FILE, 'summary.json', 'metrics.csv', 'tensorboard', 'saved_model',
           'personalized_model')


# What experiments.audit's membership-inference audit (tff_med.audit.run_audit)
# adds to a finished run's folder: audit.json and the local-only model it trains
# for comparison. They describe the run in the folder, so overwrite=True deletes
# them with it and a folder holding them but no program state is refused. Glob
# patterns.
MEMBERSHIP_AUDIT_OUTPUTS = ('audit.json', 'audit_local_*')
SESSION_EVENTS = ('started', 'resumed')  # The audit log's entries that open a session.


def _membership_audit_outputs(output_dir: str) -> list[str]:
  """The paths of MEMBERSHIP_AUDIT_OUTPUTS in `output_dir`."""
  return sorted(path for pattern in MEMBERSHIP_AUDIT_OUTPUTS
                for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)))


def data_fingerprint(data: FederatedData) -> str:
  """sha256 over every hospital's name and train/test arrays."""
  digest = hashlib.sha256()
  for hospital in data.hospitals:
    digest.update(hospital.encode())
    data.digest_records(digest, hospital)
  return digest.hexdigest()


def _differences(saved, current, prefix='') -> list[str]:
  """Dotted field paths where two nested dicts differ."""
  if isinstance(saved, dict) and isinstance(current, dict):
    return [d for key in sorted(set(saved) | set(current))
            for d in _differences(saved.get(key), current.get(key),
                                  f'{prefix}{key}.' if prefix or key else '')]
  return [] if saved == current else [f'{prefix.rstrip(".")} (saved {saved!r}, now {current!r})']


class FolderError(ValueError):
  """The output folder holds state or outputs that this run may not continue or
  add to (another set-up, lost state, an earlier run's outputs, resume=False)."""


def _earlier_outputs(output_dir: str) -> list[str]:
  """The outputs in `output_dir` that hold something released (not the empty
  event file and CSV header a run cut before its first round leaves)."""
  found = [name for name in ('summary.json', 'saved_model')
           if os.path.exists(os.path.join(output_dir, name))]
  csv_path = os.path.join(output_dir, 'metrics.csv')
  if os.path.exists(csv_path):
    with open(csv_path) as f:
      if len(f.read().split()) > 1:  # Rows beyond the header.
        found.append('metrics.csv')
  events = glob.glob(os.path.join(output_dir, TENSORBOARD_DIR, '**', '*tfevents*'),
                     recursive=True)
  if any(event.summary.value for path in events
         for event in tf.compat.v1.train.summary_iterator(path)):
    found.append(f'{TENSORBOARD_DIR}/')
  return found + [os.path.basename(path) for path in _membership_audit_outputs(output_dir)]


class RunState:
  """The program state of one run folder. `identity`: what must match to resume
  (the config's fields, `data`: the data fingerprint, `plan`: the plan's class
  chain); a mismatch names the differing fields."""

  def __init__(self, output_dir: str, identity: dict, resume: bool = True,
               overwrite: bool = False):
    self.output_dir = output_dir
    self._dir = os.path.join(output_dir, STATE_DIR)
    identity_path = os.path.join(self._dir, 'run.json')
    if overwrite:
      audits = _membership_audit_outputs(output_dir)
      for path in [os.path.join(output_dir, name) for name in OUTPUTS] + audits:
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)
    self._manager = NumpyProgramStateManager(self._dir, keep_total=2, keep_first=False)
    try:  # Continues the chain already there; refuses a broken one.
      self._log = audit_log.AuditLog(os.path.join(output_dir, AUDIT_FILE))
    except audit_log.AuditLogError as e:
      raise FolderError(f'{e}: the audit log was edited; start again (overwrite=True) or '
                        'choose another output_dir') from None
    entries = self._log.entries()
    self._audited = {entry['round'] for entry in entries if entry['event'] == 'round'}
    # The newest state version an entry was written after (older logs: rounds only).
    logged_version = max((entry.get('state_version', entry.get('round', 0))
                          for entry in entries), default=0)
    self._sessions = {entry['session'] for entry in entries
                      if entry['event'] in SESSION_EVENTS}
    identity = json.loads(json.dumps(json_safe(identity)))
    versions = asyncio.run(self._manager.get_versions()) or []
    self.saved_version = max(versions) if versions else 0
    if self.saved_version and not resume:
      raise FolderError(f'{output_dir} holds the saved state of a run (program state version '
                       f'{self.saved_version}): resume it (resume=True), start again '
                       '(overwrite=True) or choose another output_dir')
    if logged_version > self.saved_version:  # State is saved before anything is released.
      raise FolderError(
          f'{output_dir}: {AUDIT_FILE} records releases after program state version '
          f'{logged_version}, but program_state/ holds '
          f'{f"version {self.saved_version}" if self.saved_version else "no state"} (deleted?): '
          'continuing would train or fine-tune again with fresh noise what was released, and '
          'a ledger that forgot it would charge it once. Start again (overwrite=True) or '
          'choose another output_dir')
    leftovers = [] if self.saved_version else _earlier_outputs(output_dir)
    if leftovers:  # A fresh run would add its event files and rows to theirs.
      raise FolderError(
          f'{output_dir} holds outputs of an earlier run ({", ".join(leftovers)}) but no '
          'program state to resume it from: start again (overwrite=True), which deletes '
          'them, or choose another output_dir')
    if self.saved_version:
      with open(identity_path) as f:
        differences = _differences(json.load(f), identity)
      if differences:
        raise FolderError(f'{output_dir} holds a run with a different set-up; differing '
                         f'fields: {"; ".join(differences)}. Use the same settings to '
                         'resume it, overwrite=True to start again, or another output_dir')
    else:
      with open(identity_path, 'w') as f:
        json.dump(identity, f, indent=2)

  def fingerprints(self, data: FederatedData) -> dict[str, dict]:
    """Per hospital, what the audit log records of its data: an HMAC-SHA256 of its
    train/test arrays and their row and feature counts. A plain hash would let a
    reader who knows all records but one test guesses of that one; the key is
    drawn from the OS once per run and kept in program_state/ (not released), so
    only the coordinator can recompute a fingerprint."""
    path = os.path.join(self._dir, 'fingerprint_key')
    if not os.path.exists(path):
      os.makedirs(self._dir, exist_ok=True)
      with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'w') as f:
        f.write(secrets.token_hex(32))
    with open(path) as f:
      key = bytes.fromhex(f.read())
    fingerprints = {}
    for hospital in data.hospitals:
      mac = data.digest_records(hmac.new(key, digestmod=hashlib.sha256), hospital)
      fingerprints[hospital] = {'hmac_sha256': mac.hexdigest(),
                                'train_rows': data.num_train(hospital),
                                'test_rows': data.num_test(hospital),
                                'feature_shape': list(data.feature_shape)}
    return fingerprints

  def load(self, initial_state) -> tuple[object, dict]:
    """(process state, extras) of the last saved round."""
    state, _, extras = asyncio.run(self._manager.load(
        self.saved_version, [initial_state, 0, '']))
    return state, json.loads(extras if isinstance(extras, str) else extras.decode())

  def save(self, state, extras: dict) -> None:
    """Saves `state` as the next program-state version (the round it follows is
    in `extras`: a save before a round, or after training, keeps the last round
    trained); `extras` may hold NaN and numpy scalars."""
    version = self.saved_version + 1
    document = json.dumps(extras, default=lambda value: value.item())
    asyncio.run(self._manager.save([state, version, document], version))
    self.saved_version = version

  def audited_rounds(self) -> set[int]:
    """Rounds the audit log already holds."""
    return set(self._audited)

  def audited_sessions(self) -> set[int]:
    """Sessions whose start the audit log already holds."""
    return set(self._sessions)

  def audit(self, event: str, **payload) -> str:
    """Appends an entry to the audit log, with `state_version`: the program
    state it follows (a folder whose state is older is refused); returns its
    head (`AuditLog.append`)."""
    head = self._log.append(event, state_version=self.saved_version, **payload)
    if event == 'round':
      self._audited.add(payload['round'])
    elif event in SESSION_EVENTS:
      self._sessions.add(payload['session'])
    return head

  @property
  def audit_head(self) -> str:
    return self._log.head
