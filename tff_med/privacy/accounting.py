"""Differential-privacy accounting on `dp_accounting`: events, epsilon, calibration, ledger.

Record level (`privacy.level=record`): each hospital is its own accounting unit; one round
at hospital k is `dp_sgd_event(batch_size / n_k, noise_multiplier, steps)`.
Hospital level (`privacy.level=client`): one unit for the whole federation; one round is
`sampled_round_event(<TFF aggregation DpEvent>, clients_per_round / hospitals)`.
Epsilon always comes from composing all of a unit's events in one accountant.
"""

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import attr
import dp_accounting
from dp_accounting import pld, rdp

ACCOUNTANTS = ('rdp', 'pld')
LEVELS = ('record', 'client')
_ACCOUNTANT_FNS = {'rdp': rdp.RdpAccountant, 'pld': pld.PLDAccountant}


def make_accountant(name: str) -> dp_accounting.PrivacyAccountant:
  """A fresh RDP (default orders) or PLD (default discretisation) accountant."""
  if name not in _ACCOUNTANT_FNS:
    raise ValueError(f'privacy.accountant={name!r}: choose one of {ACCOUNTANTS}')
  return _ACCOUNTANT_FNS[name]()


def sampled_round_event(aggregation_event: dp_accounting.DpEvent,
                        sampling_rate: float) -> dp_accounting.DpEvent:
  """`aggregation_event` under Poisson sampling at `sampling_rate` (a probability
  in (0, 1]); at 1 nobody is left out, so the event is returned unamplified; a
  NoOp (nothing released) stays a NoOp."""
  if not 0 < sampling_rate <= 1:
    raise ValueError(f'sampling rate {sampling_rate}: must be in (0, 1]')
  if sampling_rate == 1 or isinstance(aggregation_event, dp_accounting.NoOpDpEvent):
    return aggregation_event
  return dp_accounting.PoissonSampledDpEvent(sampling_rate, aggregation_event)


def dp_sgd_event(sampling_rate: float, noise_multiplier: float,
                 steps: int) -> dp_accounting.DpEvent:
  """`steps` DP-SGD steps, each Poisson-sampling records at `sampling_rate` and
  adding Gaussian noise of `noise_multiplier` x clip; 0 steps release nothing."""
  if steps == 0:
    return dp_accounting.NoOpDpEvent()
  step = sampled_round_event(dp_accounting.GaussianDpEvent(noise_multiplier), sampling_rate)
  return dp_accounting.SelfComposedDpEvent(step, steps)


def event_to_json(event: dp_accounting.DpEvent) -> dict:
  """`event` as JSON: its class name and attrs fields, nested events recursed.
  (`DpEvent.to_named_tuple` loses the names in JSON, hence these two.)"""
  def value(v):
    if isinstance(v, dp_accounting.DpEvent):
      return event_to_json(v)
    return [value(x) for x in v] if isinstance(v, (list, tuple)) else v
  return {'_type': type(event).__name__,
          **{f.name: value(getattr(event, f.name)) for f in attr.fields(type(event))}}


def event_from_json(obj: dict) -> dp_accounting.DpEvent:
  """Inverse of `event_to_json`."""
  def value(v):
    if isinstance(v, dict) and '_type' in v:
      return event_from_json(v)
    return [value(x) for x in v] if isinstance(v, list) else v
  fields = {k: value(v) for k, v in obj.items() if k != '_type'}
  return getattr(dp_accounting, obj['_type'])(**fields)


def epsilon(events: Sequence[dp_accounting.DpEvent], delta: float, accountant: str) -> float:
  """Epsilon at `delta` of all `events` composed in one fresh accountant.

  Both accountants turn a `NonPrivateDpEvent` into `math.inf` themselves (RDP adds
  inf at every order, PLD flags the ledger as non-private), as they do a zero
  noise multiplier, so no special case is needed here.
  """
  acc = make_accountant(accountant)
  try:
    for event in events:
      acc.compose(event)
  except dp_accounting.UnsupportedEventError as err:
    raise ValueError(f'privacy.accountant={accountant!r} cannot account for this run '
                     f'(try privacy.accountant=rdp): {err}') from err
  return float(acc.get_epsilon(delta))


DELTA_MARGIN = 10  # delta must be at most 1 / (DELTA_MARGIN x the unit count).


def default_record_delta(num_train_rows: Mapping[str, int]) -> float:
  """The largest power of ten at most 1 / (10 x the largest hospital's rows)."""
  if not num_train_rows or min(num_train_rows.values()) < 1:
    raise ValueError(f'every hospital needs at least one training row: {dict(num_train_rows)}')
  # 10**-(d + 1) with d the digit count of n: 199 rows -> 1e-4, 1000 rows -> 1e-5.
  return 10.0 ** -(len(str(max(num_train_rows.values()))) + 1)


def check_record_delta(delta: float, num_train_rows: Mapping[str, int]) -> None:
  """Raises ValueError naming `privacy.target_delta` unless 0 < delta <= 1 / (10 n_k) for
  every hospital k (n_k its training rows): a delta near 1 / n_k allows the
  mechanism to release one of n_k records outright."""
  if not 0 < delta < 1:
    raise ValueError(f'privacy.target_delta={delta}: must be in (0, 1)')
  for hospital, rows in sorted(num_train_rows.items(), key=lambda item: -item[1]):
    if delta > 1 / (DELTA_MARGIN * rows):
      raise ValueError(f'privacy.target_delta={delta}: must be at most 1/({DELTA_MARGIN} x {rows}) '
                       f'because hospital {hospital!r} has {rows} training rows (default: '
                       f'{default_record_delta(num_train_rows):g})')


def check_hospital_delta(delta: float, num_hospitals: int) -> None:
  """Raises ValueError naming `privacy.target_delta` unless 0 < delta <= 1 / (10 N) for
  N hospitals (hospital-level DP: each hospital's whole dataset is one unit)."""
  if not 0 < delta <= 1 / (DELTA_MARGIN * num_hospitals):
    raise ValueError(f'privacy.target_delta={delta}: hospital-level DP needs 0 < delta <= '
                     f'1/({DELTA_MARGIN} x {num_hospitals} hospitals) = '
                     f'{1 / (DELTA_MARGIN * num_hospitals):.3g}')


def substitution_bound(eps: float, delta: float) -> tuple[float, float]:
  """(epsilon, delta) when a unit is replaced rather than added or removed: a
  replacement is a removal then an addition, so group privacy for two changes
  gives (2 eps, (1 + e^eps) delta). Used where unit counts are released."""
  if math.isinf(eps):
    return math.inf, delta
  return 2 * eps, min(1.0, (1 + math.exp(eps)) * delta)


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, accountant: str,
    event_fns: Mapping[str, Callable[[float], dp_accounting.DpEvent]]) -> float:
  """The smallest noise multiplier sigma with epsilon(event_fns[unit](sigma)) <=
  `target_epsilon` for every unit; 0.0 (no noise) when the target is infinite."""
  if not target_epsilon > 0:
    raise ValueError(f'privacy.target_epsilon={target_epsilon}: must be positive')
  if math.isinf(target_epsilon):
    return 0.0
  fresh_accountant = functools.partial(make_accountant, accountant)
  return max((dp_accounting.calibrate_dp_mechanism(fresh_accountant, event_fn,
                                                   target_epsilon, delta)
              for event_fn in event_fns.values()), default=0.0)


class PrivacyLedger:
  """The DP events that happened, per accounting unit: a hospital (record level)
  or one unit for the whole federation (hospital level).

  Identical events of a unit are kept as one event with a count and composed as
  `SelfComposedDpEvent(event, count)`, so a query costs O(distinct events); each
  unit's last answer is cached, so a preview of the next round followed by
  recording that round and asking again composes once.
  """

  def __init__(self, level: str, accountant: str, delta: float, noise_multiplier: float,
               l2_norm_clip: float, sampling_rates: Mapping[str, float]):
    """`sampling_rates`: per unit, the Poisson sampling probability of one step
    (record level) or one round (hospital level); its keys are the units."""
    if level not in LEVELS:
      raise ValueError(f'privacy.level={level!r}: the ledger needs one of {LEVELS}')
    make_accountant(accountant)  # Validates the name.
    if not 0 < delta < 1:
      raise ValueError(f'privacy.target_delta={delta}: must be in (0, 1)')
    if not sampling_rates:
      raise ValueError('the ledger needs at least one accounting unit')
    self._level = level
    self._accountant = accountant
    self._delta = delta
    self._noise_multiplier = noise_multiplier
    self._l2_norm_clip = l2_norm_clip
    self._sampling_rates = dict(sampling_rates)
    self._events = {unit: [] for unit in sampling_rates}  # [(event, count)]
    self._steps = dict.fromkeys(sampling_rates, 0)
    self._non_private = dict.fromkeys(sampling_rates, 0)
    self._cache = {}  # unit -> (its last queried [(event, count)], their epsilon)

  def _check_unit(self, unit: str) -> None:
    if unit not in self._events:
      raise KeyError(f'unknown accounting unit {unit!r}: one of {list(self._events)}')

  @staticmethod
  def _merged(counted: list, events: Sequence[dp_accounting.DpEvent]) -> list:
    """`counted` [(event, count)] with `events` added, identical events merged."""
    merged = list(counted)
    for event in events:
      index = next((i for i, (e, _) in enumerate(merged) if e == event), None)
      if index is None:
        merged.append((event, 1))
      else:
        merged[index] = (event, merged[index][1] + 1)
    return merged

  def checkpoint(self) -> dict:
    """The recorded events, steps and un-noised rounds per unit, as JSON."""
    return {'events': {u: [[event_to_json(e), n] for e, n in counted]
                       for u, counted in self._events.items()},
            'steps': dict(self._steps), 'non_private': dict(self._non_private)}

  def restore(self, saved: dict) -> None:
    """Continues from `checkpoint()`'s value (same units)."""
    if set(saved['events']) != set(self._events):
      raise ValueError(f'saved ledger units {sorted(saved["events"])} are not this '
                       f'run\'s {sorted(self._events)}')
    self._events = {u: [(event_from_json(e), n) for e, n in counted]
                    for u, counted in saved['events'].items()}
    self._steps, self._non_private = dict(saved['steps']), dict(saved['non_private'])
    self._cache = {}

  def record(self, unit: str, event: dp_accounting.DpEvent, steps: int = 0) -> None:
    """Adds one round's `event` for `unit` and its `steps` noisy steps."""
    self._check_unit(unit)
    self._events[unit] = self._merged(self._events[unit], [event])
    self._steps[unit] += steps
    self._non_private[unit] += isinstance(event, dp_accounting.NonPrivateDpEvent)

  def epsilon(self, unit: str, pending: Sequence[dp_accounting.DpEvent] = ()) -> float:
    """Epsilon of `unit` at the ledger's delta over its recorded events plus the
    not-yet-recorded `pending` ones (a preview: nothing is recorded)."""
    self._check_unit(unit)
    merged = self._merged(self._events[unit], pending)
    if unit not in self._cache or self._cache[unit][0] != merged:
      events = [dp_accounting.SelfComposedDpEvent(event, count) for event, count in merged]
      self._cache[unit] = (merged, epsilon(events, self._delta, self._accountant))
    return self._cache[unit][1]

  def joint_epsilon(self) -> float:
    """Epsilon of every unit's events composed together: one person who is a unit
    at every hospital (record level: a patient with records everywhere)."""
    events = [dp_accounting.SelfComposedDpEvent(event, count)
              for counted in self._events.values() for event, count in counted]
    return epsilon(events, self._delta, self._accountant)

  def max_epsilon(self, pending: Mapping[str, Sequence[dp_accounting.DpEvent]] =
                  MappingProxyType({})) -> float:
    """The worst unit's epsilon, with `pending` events per unit previewed."""
    return max(self.epsilon(unit, pending.get(unit, ())) for unit in self._events)

  def report(self) -> dict:
    """The guarantee so far: worst-unit epsilon, per-unit details and a sentence."""
    epsilons = {unit: self.epsilon(unit) for unit in self._events}
    worst = max(self._events, key=lambda unit: (epsilons[unit], self._non_private[unit]))
    return {
        'level': self._level,
        'accountant': self._accountant,
        'epsilon': epsilons[worst],
        'delta': self._delta,
        'noise_multiplier': self._noise_multiplier,
        'l2_norm_clip': self._l2_norm_clip,
        'per_hospital': {unit: {'epsilon': epsilons[unit], 'delta': self._delta,
                                'sampling_rate': self._sampling_rates[unit],
                                'steps': self._steps[unit]} for unit in self._events},
        'non_private_rounds': dict(self._non_private),
        'statement': self._statement(worst, epsilons[worst]),
    }

  def _statement(self, worst: str, eps: float) -> str:
    """One sentence on the guarantee of the `worst` unit, whose epsilon is `eps`."""
    if self._level == 'record':
      protected = (f'each patient record at hospital {worst} '
                   f'(worst of {len(self._events)} hospitals)')
      leak = f'hospital {worst} released {{}} un-noised update(s) of its records'
    else:
      protected = "each hospital's whole dataset (hospital-level)"
      leak = "{} round(s) released an un-noised aggregate of the hospitals' updates"
    if math.isfinite(eps):
      return (f'(ε={eps:.3g}, δ={self._delta:.3g})-DP for {protected}, '
              f'{self._accountant.upper()} accountant')
    rounds = self._non_private[worst]
    reason = (leak.format(rounds) if rounds else
              f'the events recorded for {worst} carry no noise '
              f'(noise multiplier {self._noise_multiplier})')
    return f'no DP guarantee: {reason} (epsilon is infinite)'
