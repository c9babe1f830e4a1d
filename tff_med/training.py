"""One training run: the round loop over a `RoundPlan`, with program state,
evaluation, releases and outputs.

`run(data, keras_model_fn, config, output_dir)` builds the plan of `config`
(`mechanisms.plans.build_plan`) unless given one, and runs its rounds. The loop
knows no mechanism: each round it asks the plan for a cohort, draws the
hospitals that drop out (`config.dropouts`, from the seeded generator), lets the
plan refuse the round (a privacy budget), skips it when fewer than
`config.min_clients` report, runs it, lets the plan account for it, saves the
program state (`run_state.RunState`) and releases what the plan says is
releasable. A folder that holds state resumes from its last completed round.
SIGINT/SIGTERM end the run after the current round (a second one at once), with
state saved, no `worker_binary` left and summary.json saying
`"status": "interrupted"`.

A round's progress line (round, training loss where released, times, note) is
printed when the round ends; its test metrics, a function of the round's model,
are printed only once its state (and DP event) is saved, with its other
releases. Where the cohort is secret (`hides_cohort`) every line is held to the
end: their arrival times would time each round.
"""

import dataclasses
import hashlib
import json
import platform
import signal
import threading
import time
from collections.abc import Callable
from importlib import metadata

import numpy as np

from tff_med import audit_log, personalization, runtime
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms.plans import build_plan
from tff_med.mechanisms.round_plan import Round, RoundPlan
from tff_med.mechanisms.task import KerasModelFn
from tff_med.outputs import RunOutputs, json_safe
from tff_med.run_state import RunState, data_fingerprint

__all__ = ['TrainConfig', 'build_plan', 'run']


def _flat_eval(evaluation: dict) -> dict:
  """Evaluation in the nested form released to TensorBoard/CSV."""
  return {'per_hospital': {h: {'accuracy': m['accuracy'], 'auc': m['auc']}
                           for h, m in evaluation['per_hospital'].items()},
          'mean_hospital': evaluation['mean_hospital'],
          'pooled': evaluation['pooled']}


class _Progress:
  """One line per round: round, training loss (where released), elapsed and
  estimated time left; no times where they would reveal a secret cohort
  (`timed` False). Test metrics go on a line of their own, printed with the
  round's releases. The first round of a session also traces and compiles the
  computations, so the time left is estimated from the rounds after it (after
  the first round alone: unknown, `?`)."""

  def __init__(self, rounds: int, first_round: int, log: Callable[[str], None],
               timed: bool = True, clock: Callable[[], float] = time.monotonic):
    self._rounds, self._first, self._clock = rounds, first_round, clock
    self._start, self._first_done = clock(), None
    self.timed, self.log = timed, log

  def elapsed(self) -> float:
    return self._clock() - self._start

  def _left(self, round_num: int) -> str:
    if round_num == self._first:
      self._first_done = self._clock()
    if round_num >= self._rounds:
      return f'{0:6.1f}s'
    if self._first_done is None or round_num == self._first:
      return f'{"?":>6} '
    per_round = (self._clock() - self._first_done) / (round_num - self._first)
    return f'{per_round * (self._rounds - round_num):6.1f}s'

  def lines(self, round_num: int, metrics: dict, note: str) -> tuple[str, str | None]:
    """(the round's line, its test-metrics line or None)."""
    elapsed, left = self.elapsed(), self._left(round_num)
    loss = metrics.get('train', {}).get('loss')
    line = (f'round {round_num:4d}/{self._rounds}  '
            + (f'loss {loss:.4f}  ' if loss is not None else '')
            + (f'elapsed {elapsed:6.1f}s  left ~{left}' if self.timed else ''))
    evaluated = None
    if 'eval' in metrics:
      pooled = metrics['eval']['pooled']
      evaluated = (f"      round {round_num:4d} test: pooled acc {pooled['accuracy']:.3f} "
                   f"auc {pooled['auc']:.3f}")
    return line + (f'  ({note})' if note else ''), evaluated


class _Interrupts:
  """SIGINT and SIGTERM while the loop runs: the first asks it to stop after the
  current round, a second raises KeyboardInterrupt at once. Installed only from
  the main thread (Python delivers signals there)."""

  def __init__(self, log: Callable[[str], None]):
    self.requested, self._log, self._previous = None, log, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    self._log(f'{self.requested}: stopping after this round (again to stop now)')

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


@dataclasses.dataclass
class _Loop:
  """What the loop carries between rounds, and saves with the process state."""
  round_num: int = 0
  rng_state: dict | None = None
  # [(round, metrics, audit entry, lines)]; a session's start entry held under a
  # hidden cohort is (None, None, (event, entry), []).
  pending: list = dataclasses.field(default_factory=list)
  evaluations: list = dataclasses.field(default_factory=list)  # [(round, evaluation)]
  seconds: float = 0.0
  sessions: int = 0
  skipped_rounds: int = 0
  dropouts: int = 0
  stopped: dict | None = None
  personalized: dict | None = None  # What `personalization.personalize` saved.

  def extras(self, plan: RoundPlan) -> dict:
    return {**dataclasses.asdict(self), 'plan': plan.checkpoint()}


def _release(outputs: RunOutputs | None, state: RunState | None, pending: list,
             log: Callable[[str], None]) -> None:
  """Releases pending (round, metrics, audit entry, progress lines) not yet in
  the audit log; call only once their rounds' state is saved."""
  done = state.audited_rounds() if state else set()
  for round_num, metrics, audit, lines in pending:
    if round_num is None:  # A session's start.
      event, entry = audit
      if state and entry['session'] not in state.audited_sessions():
        state.audit(event, **entry)
      continue
    if round_num in done:
      continue
    if outputs:
      outputs.release(metrics, round_num)
    if state:
      state.audit('round', **audit)
      if outputs:
        state.audit('release', round=round_num, to=['tensorboard', 'metrics.csv'],
                    metrics=sorted(_names(metrics)))
    for line in lines:
      log(line)
  pending.clear()


def _names(metrics: dict, prefix: str = '') -> list[str]:
  """The '/'-joined names of nested `metrics`' leaves."""
  return [name for key, value in metrics.items()
          for name in (_names(value, f'{prefix}{key}/') if isinstance(value, dict)
                       else [f'{prefix}{key}'])]


def _dp_entry(before: dict, after: dict) -> dict:
  """The audit log's DP fields for what the ledger recorded between two
  `RoundPlan.ledger()` readings: accountant, delta, the new events per
  adversary and unit ([[event, count]]) and every unit's epsilon after them."""
  if not after:
    return {}
  before, after = json_safe(before), json_safe(after)  # TFF's events hold numpy scalars.
  added = {}
  for view, units in after['events'].items():
    for unit, counted in units.items():
      old = {json.dumps(e, sort_keys=True): n for e, n in before['events'][view][unit]}
      new = [[e, n - old.get(json.dumps(e, sort_keys=True), 0)] for e, n in counted]
      new = [pair for pair in new if pair[1]]
      if new:
        added.setdefault(view, {})[unit] = new
  return {'accountant': after['accountant'], 'delta': after['delta'], 'dp_events': added,
          'epsilon': after['epsilon']}


def _session_entry(config: TrainConfig, data: FederatedData, plan: RoundPlan,
                   saved: RunState) -> dict:
  """What the audit log records at each session's start: the config and its
  hash, software versions, each hospital's data fingerprint (a keyed hash and
  counts, never records: `RunState.fingerprints`) and the plan."""
  config_json = json.dumps(json_safe(dataclasses.asdict(config)), sort_keys=True)
  return {'config': json.loads(config_json),
          'config_sha256': hashlib.sha256(config_json.encode()).hexdigest(),
          'versions': {'python': platform.python_version(),
                       **{package: metadata.version(package) for package in _PACKAGES}},
          'data': {'name': data.name, 'hospitals': saved.fingerprints(data)},
          'plan': _plan_chain(plan)}


_PACKAGES = ('tensorflow', 'tensorflow-federated', 'tensorflow-privacy', 'dp-accounting',
             'numpy')


def run(data: FederatedData, keras_model_fn: KerasModelFn, config: TrainConfig,
        output_dir: str | None = None, *, aggregator=None, plan: RoundPlan | None = None,
        log: Callable[[str], None] = print, extra_summary: dict | None = None,
        resume: bool = True, overwrite: bool = False, audit_key: str | None = None) -> dict:
  """Trains, evaluates and (with `output_dir`) writes outputs; returns the summary.

  Args:
    data: the hospitals' data.
    keras_model_fn: no-arg function returning a fresh uncompiled Keras model
      with one logit output, shape [B, 1]; same initial weights on every call.
    config: the run's settings.
    output_dir: where TensorBoard events, metrics.csv, audit_log.jsonl,
      program_state/, saved_model/ and summary.json go; None writes nothing
      (and cannot resume).
    aggregator: the user's `tff.aggregators` weighted factory for the hospitals'
      updates (see `build_plan`).
    plan: a plan already built (`build_plan(...)`, possibly wrapped by the
      user's mechanisms); built from `config` otherwise.
    log: receives the per-round progress lines.
    extra_summary: merged into the summary (e.g. dataset options).
    resume: continue from the state saved in `output_dir` (same config and data
      only); False refuses a folder that holds state.
    overwrite: delete the saved state and start again.
    audit_key: an Ed25519 private key (PEM) that signs the audit log's head
      (`tff_med.audit_log`); checked before training.

  Raises:
    ValueError: a field of `config` at fault, or a folder holding another run.
  """
  if audit_key:
    if not output_dir:
      raise ValueError('audit_key signs the audit log of an output_dir; give one')
    audit_log.public_key(audit_key)  # A bad key fails now, not after training.
  plan = plan or build_plan(data, keras_model_fn, config, aggregator, log)
  saved = (RunState(output_dir, {**dataclasses.asdict(config),
                                 'data': data_fingerprint(data),
                                 'plan': _plan_chain(plan)}, resume, overwrite)
           if output_dir else None)
  outputs = RunOutputs(output_dir, data) if output_dir else None
  loop, rng = _Loop(), np.random.default_rng(config.seed)
  with runtime.execution_context(
      secure_sums=plan.secure_sums,
      max_concurrent_computation_calls=config.max_concurrent_computation_calls), \
      _Interrupts(log) as interrupts:
    initial_state = plan.initialize()
    state, loop = _restore(plan, saved, initial_state, loop, rng, log)
    loop.sessions += 1
    earlier_seconds = loop.seconds  # Of the sessions before this one.
    if saved:
      start = ('resumed' if loop.round_num else 'started',
               {'session': loop.sessions, 'after_round': loop.round_num,
                **_session_entry(config, data, plan, saved)})
      if plan.hides_cohort:  # Its time would date the rounds: held with them.
        loop.pending.append((None, None, start, []))
      else:
        saved.audit(start[0], **start[1])
    if not plan.hides_cohort:
      _release(outputs, saved, loop.pending, log)  # What a cut run saved but never released.
    progress = _Progress(config.rounds, loop.round_num + 1, log, timed=not plan.hides_cohort)
    # The next program-state version: the state and the loop's record as they are now.
    save = (lambda state_: saved.save(state_, loop.extras(plan))) if saved else None
    try:
      while loop.round_num < config.rounds and not loop.stopped and not interrupts.requested:
        loop.rng_state = rng.bit_generator.state  # What a save ahead of the round resumes.
        state = _one_round(plan, config, data, state, rng, loop, progress, audited=bool(saved),
                           save_ahead=save)
        if loop.stopped:  # Nothing ran; a resumed run stops at the same check.
          break
        loop.rng_state = rng.bit_generator.state
        loop.seconds = earlier_seconds + progress.elapsed()
        if saved:
          save(state)
        if not plan.hides_cohort:
          _release(outputs, saved, loop.pending, log)
    except KeyboardInterrupt:
      log('interrupted mid-round: the run continues from its last saved round')
      if saved:  # What the folder holds; without one, the last completed round.
        sessions = loop.sessions
        state, loop = _restore(plan, saved, initial_state, _Loop(), rng, log)
        loop.sessions = sessions
    finished = loop.round_num == config.rounds or loop.stopped
    status = 'completed' if finished else 'interrupted'
    loop.seconds = earlier_seconds + progress.elapsed()
    _release(outputs, saved, loop.pending, log)
    last_round, evaluation = (loop.evaluations or [(None, None)])[-1]
    if last_round != loop.round_num:  # The last round ran no evaluation (or none ran).
      evaluation = plan.evaluate(state)
    if outputs and finished:  # An unfinished folder holds no model.
      hashes = plan.model_hashes(state)
      for name, path in outputs.save_models(plan.models(state)):
        if saved:
          saved.audit('model_saved', **audit_log.model_saved(output_dir, path, hashes[name],
                                                             model=name))
    personal = None
    if finished and config.personalize.finetune_epochs:
      ledger = [plan.ledger()]

      def checkpoint(record: dict, event: str) -> None:
        loop.personalized = record
        if saved:
          save(state)
          now = plan.ledger()
          saved.audit(event, session=loop.sessions, **_dp_entry(ledger[0], now))
          ledger[0] = now
      personal = personalization.personalize(plan, state, evaluation, loop.personalized,
                                              checkpoint, outputs, log,
                                              audit=saved.audit if saved else None)
    if saved:
      saved.audit(status, session=loop.sessions, after_round=loop.round_num)
  summary = _merged(_summary(plan, config, data, evaluation, loop, status, extra_summary),
                    personal or {})
  if saved:
    summary['audit_log_sha256'] = saved.audit_head
    if audit_key:
      summary['audit_log_public_key'] = audit_log.sign_head(saved.audit_head, audit_key,
                                                            output_dir)
  if outputs:
    outputs.write_summary(summary)
  return summary


def _restore(plan, saved: RunState | None, initial_state, loop: '_Loop', rng, log):
  """(state, loop) from the last saved round, or (`initial_state`, `loop`)."""
  if not saved or not saved.saved_version:
    return initial_state, loop
  state, extras = saved.load(initial_state)
  plan.restore(extras.pop('plan'))
  loop = _Loop(**extras)
  rng.bit_generator.state = loop.rng_state
  log(f'resuming after round {loop.round_num} from {saved.output_dir}')
  return state, loop


def _one_round(plan, config, data, state, rng, loop: _Loop, progress: _Progress,
               audited: bool, save_ahead: Callable[[object], None] | None):
  """Runs round loop.round_num + 1 (or records why the run stops before it);
  returns the state after it. `audited`: whether its audit entry is written;
  `save_ahead(state)`: saves the state before the round, with what the plan
  charged ahead of it (`RoundPlan.charge_ahead`)."""
  round_num = loop.round_num + 1
  round_start = time.monotonic()
  cohort = plan.cohort(list(data.hospitals), rng)
  dropped = (set(rng.choice(cohort, min(config.dropouts, len(cohort)), replace=False).tolist())
             if config.dropouts and cohort else set()) | plan.unreachable(cohort)
  round_ = Round(round_num, tuple(cohort), tuple(h for h in cohort if h not in dropped))
  reason = plan.stop_reason(state, round_)
  if reason:
    loop.stopped = {'stopped_early': True, 'rounds_completed': loop.round_num,
                    'reason': reason}
    progress.log(f'privacy budget: {reason}')
    return state
  ledger = plan.ledger() if audited else None  # The round's own charge is the change.
  if len(round_.reporting) < config.min_clients:
    result = plan.skip_round(state, round_)
    result = dataclasses.replace(result, note=f'skipped: {len(round_.reporting)} of '
                                 f'{len(cohort)} hospitals reported, min_clients='
                                 f'{config.min_clients}')
  else:
    if plan.charge_ahead(round_) and save_ahead:
      save_ahead(state)  # Write-ahead: the charge is saved before anything leaves.
    result = plan.run_round(state, round_)
  plan.account(round_, result)
  metrics = {'clients_in_round': len(cohort), 'reporting': len(round_.reporting),
             'applied': int(result.applied), **result.metrics,
             'round_seconds': time.monotonic() - round_start}
  metrics = plan.releasable(metrics)
  evaluation = None
  if round_num % config.eval_every == 0 or round_num == config.rounds:
    evaluation = plan.evaluate(result.state)
    metrics['eval'] = _flat_eval(evaluation)
  # Under a secret cohort the log holds no cohort, dropouts or bytes (written at the
  # end with the other releases, its times tell nothing about a round either).
  audit = {'round': round_num, 'session': loop.sessions, 'applied': result.applied,
           **({} if plan.hides_cohort else {
               'cohort': list(cohort), 'reporting': list(round_.reporting),
               'dropouts': sorted(dropped),
               'bytes_per_client': metrics.get('aggregator', {}).get('bytes_per_client')}),
           **({'note': result.note} if result.note else {}),
           **_dp_entry(ledger, plan.ledger()),
           'model_sha256': plan.model_hashes(result.state)} if audited else None
  line, evaluated = progress.lines(round_num, metrics, result.note)
  held = [evaluated] if evaluated else []  # A function of the model: once it is saved.
  if plan.hides_cohort:
    held.insert(0, line)  # Printed now, the line would time the round.
  else:
    progress.log(line)
  # The loop's record changes last, at once: a second Ctrl-C before here leaves it
  # at the previous round, with the state the caller still holds.
  loop.round_num, loop.dropouts = round_num, loop.dropouts + len(dropped)
  loop.skipped_rounds += not result.applied
  if evaluation:
    loop.evaluations.append((round_num, evaluation))
  loop.pending.append((round_num, metrics, audit, held))
  return result.state


def _merged(summary: dict, extra: dict) -> dict:
  """`summary` with `extra`'s fields added, nested dicts merged."""
  merged = dict(summary)
  for key, value in extra.items():
    merged[key] = (_merged(merged[key], value) if isinstance(value, dict)
                   and isinstance(merged.get(key), dict) else value)
  return merged


def _plan_chain(plan: RoundPlan) -> list[str]:
  """Class names from the outermost wrapper to the innermost plan."""
  chain = [type(plan).__name__]
  while 'inner' in vars(plan):
    plan = plan.inner
    chain.append(type(plan).__name__)
  return chain


def _summary(plan, config, data, evaluation, loop: _Loop, status: str,
             extra_summary: dict | None) -> dict:
  return {
      'status': status,
      'algorithm': config.algorithm.name,
      'dataset': data.name,
      'rounds': config.rounds,
      'rounds_completed': loop.round_num,
      'sessions': loop.sessions,
      'seed': config.seed,
      'hospitals': list(data.hospitals),
      'data_description': data.description,
      'config': dataclasses.asdict(config),
      'pooled': evaluation['pooled'],
      'mean_hospital': evaluation['mean_hospital'],
      'per_hospital': {h: {**evaluation['per_hospital'][h], 'num_train': data.num_train(h)}
                       for h in data.hospitals},
      **({'local_models': evaluation['local_models']} if 'local_models' in evaluation else {}),
      **({'skipped_rounds': loop.skipped_rounds, 'dropouts': loop.dropouts}
         if not plan.hides_cohort else {}),
      **plan.summary(),
      **({'simulated_attack': dataclasses.asdict(config.attack)}
         if config.attack.name != 'none' else {}),
      **(loop.stopped or {}),
      **(extra_summary or {}),
      **({'wall_seconds': loop.seconds} if not plan.hides_cohort else {}),
  }
