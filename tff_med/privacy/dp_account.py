"""The DP account of a federated run: who takes part each round, the DP events
each round really produces, the budget, and the guarantee in words, for both
levels. It builds no process: the mechanisms (`tff_med.mechanisms.record_dp`,
`hospital_dp`) train; this class validates the privacy fields, calibrates the
noise and keeps one `accounting.PrivacyLedger` per adversary.

- `record`: DP-SGD inside each hospital. Unit: one patient record at one
  hospital; its hospital's event per round it reports is
  dp_sgd_event(batch_size / n_k, noise_multiplier, local steps). The noise is
  added inside the hospital, so the epsilon holds against everyone who sees the
  hospital's updates, the server included. Hospitals are chosen as without DP.
- `client`: hospital-level DP; unit: one hospital's whole dataset. Two
  aggregations, each with its own adversaries (`ADVERSARIES`):
  - `central` (secure_agg.mode=none): DP-FedAvg with
    `tff.aggregators.DifferentiallyPrivateFactory`; the server sees clear
    updates, so nothing is claimed against it. Observers of the released models
    get epsilon from TFF's own DP event per round, amplified by Poisson sampling
    of hospitals (probability q = clients_per_round / hospitals) because the
    cohort is drawn from OS randomness, every round (an empty cohort's too)
    releases a noised model, and nothing released varies with the cohort.
  - `masking`: each hospital adds its noise share before masking; against the
    server plus up to `colluders` hospitals, a hospital is charged, for each
    round it reported in, a Gaussian event with the noise the honest survivors
    other than itself really carried (no amplification: the server sees the
    cohort, and an aborted round shows observers that few survived; observers
    see less than the server, so the server's epsilon bounds theirs).

Personalisation (record level): the DP-SGD fine-tuning each hospital runs
after the last round is one more dp_sgd event of that hospital (`personal_epochs`
x ceil(n_k / batch_size) steps at rate batch_size / n_k), planned in the
calibration from target_epsilon, reserved by the max_epsilon budget before
every round, and recorded in its ledger before it runs.

Schedules (record level): `every_round` noises every round; `first_round` and
`every_n` (noise in rounds 1, 1 + N, 1 + 2N, ...) train the other rounds
without noise or clipping, which releases un-noised updates of the same records:
the accountant records a NonPrivateDpEvent and epsilon is infinite.
"""

import dataclasses
import math
import secrets
from collections.abc import Callable, Mapping, Sequence

import dp_accounting
from tensorflow_federated.python.aggregators import differential_privacy as tff_dp

from tff_med.algorithms import BASELINES, AlgorithmConfig
from tff_med.config_fields import refuse_set_when_off
from tff_med.data.federated_data import FederatedData
from tff_med.privacy import accounting
from tff_med.privacy import dp_sgd

LEVELS = ('none', 'record', 'client')
SCHEDULES = ('every_round', 'first_round', 'every_n')
CLIPPINGS = ('fixed', 'adaptive')
AGGREGATIONS = ('central', 'masking')
STUDY = 'all hospitals'  # The unit of an amplified view: every hospital alike.
# Who each epsilon is against.
ADVERSARIES = {
    'everyone': 'anyone who sees the hospital\'s model updates and every released model, '
                'the server included',
    'server': 'the aggregation server, which sees which hospitals joined each round and '
              'every message of the aggregation, colluding with up to {colluders} '
              'hospital(s)',
    'observers': 'anyone who sees the released models and metrics only (not the '
                 'server, not the cohorts, not how long the process ran)',
}
_UNIT = {'record': 'one patient record at one hospital',
         'client': "one hospital's whole training dataset"}


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """`level`: none, record (DP-SGD per hospital) or client (hospital level).
  `noise_multiplier`: noise std / clip (None: calibrated from `target_epsilon`).
  `l2_norm_clip`: per-example (record) or per-hospital update (client) L2 clip;
  the initial clip with adaptive clipping. `target_delta`: None = default
  (record: largest power of ten at most 1 / (10 x the largest hospital's training
  rows); client: 1e-3). `max_epsilon`: budget; training stops before a round
  whose worst case would exceed it. `accountant`: rdp or pld. `clipping`: client
  level, fixed or adaptive. `schedule`, `every`: record level, which rounds are
  noised."""
  level: str = 'none'
  noise_multiplier: float | None = None
  l2_norm_clip: float = 1.0
  target_epsilon: float | None = None
  target_delta: float | None = None
  max_epsilon: float | None = None
  accountant: str = 'rdp'
  clipping: str = 'fixed'
  schedule: str = 'every_round'
  every: int = 1


def check_level_none(config: PrivacyConfig) -> None:
  """With `level` none, every other field must keep its default: a run that
  silently ignored a noise multiplier or a budget would look private. ValueError
  naming the first field set."""
  if config.level == 'none':
    refuse_set_when_off(config, 'privacy', 'level',
                        'privacy.level=record or privacy.level=client; without one of them '
                        'the run is not private')


def no_dp(data: FederatedData, updates: str) -> dict:
  """The privacy block of a run without DP: no epsilon, and what it releases;
  `updates`: how the hospitals' updates travel (e.g. 'in the clear to the server')."""
  return {'level': 'none', 'epsilon': math.inf,
          'statement': 'no differential privacy: the model, its training metrics and the '
                       'hospitals\' updates depend on every record without any bound',
          'released': {
              'model updates': f'not protected ({updates})',
              'model weights, training and test metrics, hospital names and sizes':
                  'not protected',
              'preprocessing': f"not protected: {data.preprocessing.get('source', '')}"}}


@dataclasses.dataclass
class _View:
  """One adversary's accounting: its ledger (None: nothing is claimed against
  it) and whether hospital sampling is claimed to amplify privacy against it."""
  ledger: accounting.PrivacyLedger | None
  amplified: bool = False


class DpAccount:
  """The DP account of one run. Construct before training: it validates the
  privacy fields and calibrates the noise, raising ValueError naming the field.

  `aggregation` (hospital level): 'central' or 'masking' (see the module
  docstring); `colluders`: hospitals assumed to collude with the server
  (secure aggregations only); `personal_epochs` (record level): epochs of DP-SGD
  fine-tuning each hospital runs after the last round (`tff_med.personalization`),
  planned in the calibration and reserved by the budget."""

  def __init__(self, config: PrivacyConfig, algorithm: AlgorithmConfig, data: FederatedData,
               rounds: int, clients_per_round: int, batch_size: int, local_epochs: int,
               log: Callable[[str], None] = print, aggregation: str = 'central',
               colluders: int = 0, personal_epochs: int = 0):
    self.config = config
    self._algorithm = algorithm
    self._data = data
    self._batch_size = batch_size
    self._local_epochs = local_epochs
    self.personal_epochs = personal_epochs
    self._rounds = rounds
    self._num_train = {h: data.num_train(h) for h in data.hospitals}
    num_hospitals = len(data.hospitals)
    self._cohort_size = clients_per_round or num_hospitals
    self.aggregation = aggregation
    self.colluders = colluders
    self._check_fields()
    if config.level == 'record':
      self.delta = (config.target_delta if config.target_delta is not None
                    else accounting.default_record_delta(self._num_train))
      accounting.check_record_delta(self.delta, self._num_train)
      self.sampling_rates = {h: dp_sgd.sampling_rate(n, batch_size)
                             for h, n in self._num_train.items()}
    else:
      self.delta = config.target_delta if config.target_delta is not None else 1e-3
      accounting.check_hospital_delta(self.delta, num_hospitals)
      self.sampling_rates = {STUDY: self._cohort_size / num_hospitals}
    if (config.level == 'client' and config.clipping == 'adaptive'
        and config.accountant == 'pld' and self.sampling_rates[STUDY] < 1):
      raise ValueError('privacy.accountant=pld cannot account adaptive clipping with sampled '
                       'hospitals (a Poisson-sampled composed event); use privacy.accountant=rdp')
    self.noise_multiplier = config.noise_multiplier
    if self.noise_multiplier is None:
      self.noise_multiplier = accounting.calibrate_noise_multiplier(
          config.target_epsilon, self.delta, config.accountant, self._planned_event_fns())
      log(f'calibrated noise multiplier {self.noise_multiplier:.4f} for epsilon '
          f'{config.target_epsilon} at delta {self.delta:g} ({config.accountant}, worst '
          'case of every round' + (', with the personalisation fine-tuning)'
                                   if personal_epochs else ')'))
    self.views = self._views()

  def _check_fields(self) -> None:
    c = self.config
    if c.level not in LEVELS[1:]:
      raise ValueError(f'privacy.level={c.level!r}: choose one of {LEVELS}')
    if self._algorithm.name in BASELINES:
      raise ValueError(f'privacy.level={c.level} needs a federated algorithm.name, not '
                       f'{self._algorithm.name}')
    if c.accountant not in accounting.ACCOUNTANTS:
      raise ValueError(f'privacy.accountant={c.accountant!r}: choose one of {accounting.ACCOUNTANTS}')
    if (c.noise_multiplier is None) == (c.target_epsilon is None):
      raise ValueError('give exactly one of privacy.noise_multiplier and privacy.target_epsilon')
    if c.noise_multiplier is not None and not c.noise_multiplier >= 0:
      raise ValueError(f'privacy.noise_multiplier={c.noise_multiplier}: must be non-negative')
    if not c.l2_norm_clip > 0:
      raise ValueError(f'privacy.l2_norm_clip={c.l2_norm_clip}: must be positive')
    if c.max_epsilon is not None and not c.max_epsilon > 0:
      raise ValueError(f'privacy.max_epsilon={c.max_epsilon}: must be positive')
    if (c.max_epsilon is not None and c.target_epsilon is not None
        and c.max_epsilon < c.target_epsilon):
      raise ValueError(f'privacy.max_epsilon={c.max_epsilon} is below privacy.target_epsilon='
                       f'{c.target_epsilon}: the run would stop before its planned rounds')
    if c.schedule not in SCHEDULES:
      raise ValueError(f'privacy.schedule={c.schedule!r}: choose one of {SCHEDULES}')
    if c.schedule == 'every_n' and c.every < 1:
      raise ValueError(f'privacy.every={c.every}: must be at least 1')
    if c.schedule != 'every_n' and c.every != 1:
      raise ValueError(f'privacy.every={c.every} applies to privacy.schedule=every_n, not '
                       f'{c.schedule}')
    if c.clipping not in CLIPPINGS:
      raise ValueError(f'privacy.clipping={c.clipping!r}: choose one of {CLIPPINGS}')
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f'aggregation {self.aggregation!r}: one of {AGGREGATIONS}')
    if self._data.preprocessing.get('data_dependent', True):
      raise ValueError(
          f"privacy.level={c.level} needs features scaled without statistics of the records: the "
          f"data were scaled by {self._data.preprocessing.get('scaling', 'an unknown method')}"
          ' (use --scaling=public_ranges, with --feature_ranges for CSV files)')
    if c.level == 'record':
      if self._algorithm.name == 'fedprox':
        raise ValueError('privacy.level=record runs DP-SGD on each hospital, which has no '
                         'proximal term: use algorithm.name=fedavg, fedadam, fedyogi or '
                         'fedadagrad')
      if c.clipping != 'fixed':
        raise ValueError('privacy.clipping=adaptive applies to privacy.level=client; DP-SGD clips '
                         'each record at privacy.l2_norm_clip')
    elif c.schedule != 'every_round':
      raise ValueError(f'privacy.schedule={c.schedule} applies to privacy.level=record; hospital-level '
                       'DP noises every round')

  # Who is protected against whom.
  @property
  def hides_cohort(self) -> bool:
    """Hospital sampling amplifies privacy against observers: central hospital-level
    DP with a Poisson cohort (q < 1) drawn from OS randomness, where every round,
    an empty one too, releases a noised model (`noises_empty_rounds`), and the run
    releases nothing that varies with the cohort, its timing included (the
    training loop then holds its releases until the end and prints no times).
    Not under masking: a round with fewer survivors than the threshold aborts
    and leaves the model unchanged, which tells observers about the cohort."""
    return (self.config.level == 'client' and self.aggregation == 'central'
            and self.sampling_rates[STUDY] < 1)

  @property
  def noises_empty_rounds(self) -> bool:
    """Central hospital-level DP: a round whose cohort is empty still runs, and
    TFF's DP aggregator releases pure noise, so the model moves every round."""
    return self.config.level == 'client' and self.aggregation == 'central'

  def _views(self) -> dict[str, _View]:
    """Adversary name -> its accounting (ledger None: nothing is claimed)."""
    c = self.config
    ledger = lambda rates: accounting.PrivacyLedger(
        c.level, c.accountant, self.delta, self.noise_multiplier, c.l2_norm_clip, rates)
    per_hospital = dict.fromkeys(self._data.hospitals, 1.0)
    if c.level == 'record':
      return {'everyone': _View(ledger(self.sampling_rates))}
    views = {'server': _View(None if self.aggregation == 'central' else ledger(per_hospital))}
    if self.hides_cohort:
      views['observers'] = _View(ledger(self.sampling_rates), amplified=True)
    elif self.aggregation == 'central':
      views['observers'] = _View(ledger(per_hospital))
    return views

  def _planned_event_fns(self) -> dict[str, Callable[[float], dp_accounting.DpEvent]]:
    """Per adversary and unit: noise multiplier -> the event of the whole planned
    run in its worst case (every unit joins every round; the fewest survivors)."""
    rounds = self._rounds
    if self.config.level == 'record':
      # The fine-tuning takes DP-SGD steps of the same rate and noise: one event.
      return {h: (lambda sigma, h=h: accounting.dp_sgd_event(
          self.sampling_rates[h], sigma, rounds * self._steps(h) + self.personal_steps(h)))
              for h in self._num_train}
    q = self.sampling_rates[STUDY] if self.hides_cohort else 1.0
    return {STUDY: lambda sigma: dp_accounting.SelfComposedDpEvent(
        accounting.sampled_round_event(dp_accounting.GaussianDpEvent(sigma), q), rounds)}

  # Personalisation (record level, `tff_med.personalization`): after the last
  # round each hospital fine-tunes by DP-SGD for `personal_epochs` epochs; that
  # event is planned in the calibration, reserved by the budget and charged to
  # the hospital's ledger.
  def personal_steps(self, hospital: str) -> int:
    """DP-SGD steps of `hospital`'s fine-tuning (0: none planned)."""
    return dp_sgd.local_steps(self._num_train[hospital], self._batch_size,
                              self.personal_epochs)

  def _personal_event(self, hospital: str, sigma: float) -> dp_accounting.DpEvent:
    return accounting.dp_sgd_event(self.sampling_rates[hospital], sigma,
                                   self.personal_steps(hospital))

  def _personal_events(self) -> dict[str, dict[str, list[dp_accounting.DpEvent]]]:
    """Adversary -> hospital -> the fine-tuning's events (empty if none planned)."""
    if not self.personal_epochs:
      return {}
    return {'everyone': {h: [self._personal_event(h, self.noise_multiplier)]
                         for h in self._num_train}}

  def personal_budget_exceeded(self) -> float | None:
    """The epsilon after charging the fine-tuning if it exceeds
    privacy.max_epsilon, else None."""
    if self.config.max_epsilon is None:
      return None
    after = self._max_epsilon(self._personal_events())
    return after if after > self.config.max_epsilon else None

  def record_personal(self) -> None:
    """Charges every hospital its fine-tuning event."""
    for name, per_unit in self._personal_events().items():
      for unit, unit_events in per_unit.items():
        self.views[name].ledger.record(unit, unit_events[0], steps=self.personal_steps(unit))

  def _steps(self, hospital: str) -> int:
    return dp_sgd.local_steps(self._num_train[hospital], self._batch_size, self._local_epochs)

  def is_noised(self, round_num: int) -> bool:
    if self.config.schedule == 'first_round':
      return round_num == 1
    if self.config.schedule == 'every_n':
      return (round_num - 1) % self.config.every == 0
    return True

  # Rounds.
  def cohort(self, hospitals: Sequence[str]) -> list[str]:
    """Client level: the hospitals of one round, drawn from OS randomness (never
    the experiment seed), so that the cohort is secret from whoever does not see
    the round: independent Poisson draws with q."""
    draw = secrets.SystemRandom()
    q = self.sampling_rates[STUDY]
    return [h for h in hospitals if q == 1 or draw.random() < q]

  def _round_events(self, cohort: Sequence[str], round_num: int,
                    server_event: dp_accounting.DpEvent | None = None,
                    central_event: dp_accounting.DpEvent | None = None
                    ) -> dict[str, dict[str, list[dp_accounting.DpEvent]]]:
    """Adversary -> unit -> DP events of one round. Client level: `server_event`
    (secure aggregations) is the Gaussian event of the noise the round's sum
    carried against the server (None: the planned worst case); `central_event`
    is TFF's DP event of the central aggregation."""
    if self.config.level == 'record':
      if not self.is_noised(round_num):
        return {'everyone': {h: [dp_accounting.NonPrivateDpEvent()] for h in cohort}}
      return {'everyone': {h: [accounting.dp_sgd_event(
          self.sampling_rates[h], self.noise_multiplier, self._steps(h))] for h in cohort}}
    planned = dp_accounting.GaussianDpEvent(self.noise_multiplier)
    aborted = isinstance(server_event, dp_accounting.NoOpDpEvent)
    released = dp_accounting.NoOpDpEvent() if aborted else central_event or planned
    events = {}
    if self.aggregation != 'central':
      server_event = server_event or planned
      events['server'] = {h: [server_event] for h in cohort}
    if self.hides_cohort:
      events['observers'] = {STUDY: [accounting.sampled_round_event(
          released, self.sampling_rates[STUDY])]}
    elif self.aggregation == 'central':
      events['observers'] = {h: [released] for h in cohort}
    return events

  def _max_epsilon(self, pending: Mapping[str, Mapping[str, list]] | None = None) -> float:
    pending = pending or {}
    return max(view.ledger.max_epsilon(pending.get(name, {}))
               for name, view in self.views.items() if view.ledger)

  def would_exceed_budget(self, cohort: Sequence[str], round_num: int,
                          state=None) -> float | None:
    """The epsilon after this round in its worst case (the fewest survivors a
    secure aggregation allows; TFF's own DP event read from `state` for central
    hospital-level DP) if it exceeds privacy.max_epsilon, else None."""
    if self.config.max_epsilon is None:
      return None
    pending = self._round_events(cohort, round_num, central_event=self._central_event(state))
    for name, per_unit in self._personal_events().items():  # Reserved for after training.
      for unit, unit_events in per_unit.items():
        pending.setdefault(name, {}).setdefault(unit, []).extend(unit_events)
    after = self._max_epsilon(pending)
    return after if after > self.config.max_epsilon else None

  def _central_event(self, state) -> dp_accounting.DpEvent | None:
    if self.config.level != 'client' or self.aggregation != 'central' or state is None:
      return None
    try:
      return tff_dp.extract_dp_event_from_state(state.aggregator)
    except tff_dp.ExtractingDpEventFromInitialStateError:
      # Before round 1 TFF holds a placeholder; its queries' event composes to
      # the planned Gaussian (fixed clipping: exactly; adaptive: in RDP).
      return None

  def record_round(self, cohort: Sequence[str], round_num: int, state=None,
                   noisy_steps: int | None = None, trained: Sequence[str] | None = None,
                   server_event: dp_accounting.DpEvent | None = None) -> None:
    """Records the round that ran; `cohort`: the hospitals whose updates it
    released (not those that dropped out). Client level: `server_event` is the
    secure aggregation's realised event (NoOp if it aborted); central DP reads
    TFF's event from `state`. Record level: checks the client work's own count of
    noisy steps against those of the `trained` hospitals (default `cohort`)."""
    if self.config.level == 'record':
      expected = (sum(self._steps(h) for h in (cohort if trained is None else trained))
                  if self.is_noised(round_num) else 0)
      if noisy_steps is not None and self.is_noised(round_num) and noisy_steps != expected:
        raise RuntimeError(f'round {round_num}: hospitals took {noisy_steps} DP-SGD steps, '
                           f'accounting expected {expected}')
    events = self._round_events(cohort, round_num, server_event, self._central_event(state))
    for name, per_unit in events.items():
      for unit, unit_events in per_unit.items():
        steps = (self._steps(unit) if self.config.level == 'record'
                 and self.is_noised(round_num) else int(self.config.level == 'client'))
        self.views[name].ledger.record(unit, unit_events[0], steps=steps)

  def ledger(self) -> dict:
    """What the audit log records of the account: 'accountant', 'delta', and per
    adversary with a ledger, 'events' (unit -> [[event as JSON, count]]) and
    'epsilon' (unit -> epsilon at delta over those events)."""
    ledgers = {name: view.ledger for name, view in self.views.items() if view.ledger}
    events = {name: ledger.checkpoint()['events'] for name, ledger in ledgers.items()}
    return {'accountant': self.config.accountant, 'delta': self.delta, 'events': events,
            'epsilon': {name: {unit: ledgers[name].epsilon(unit) for unit in units}
                        for name, units in events.items()}}

  def checkpoint(self) -> dict:
    """Every adversary's ledger, as JSON (program state)."""
    return {name: view.ledger.checkpoint() for name, view in self.views.items() if view.ledger}

  def restore(self, saved: dict) -> None:
    for name, ledger_state in saved.items():
      self.views[name].ledger.restore(ledger_state)

  def epsilons(self) -> dict:
    """{'epsilon': the largest claimed, 'by_adversary': {name: epsilon}} for TensorBoard."""
    by_adversary = {name: view.ledger.max_epsilon() for name, view in self.views.items()
                    if view.ledger}
    return {'epsilon': max(by_adversary.values()), 'by_adversary': by_adversary}

  # What the summary says.
  def adjacency(self) -> str:
    unit = 'one record of one hospital' if self.config.level == 'record' else 'one hospital'
    return (f'add or remove {unit} (the accountants\' relation); the summary releases '
            'hospital names and training sizes, which makes the honest relation '
            f'"replace {unit}": see substitution')

  def approximations(self) -> list[str]:
    notes = []
    if self.config.level == 'client' and self.aggregation == 'masking':
      notes.append('the masked sum of discrete Gaussian noise shares is accounted as a '
                   'continuous Gaussian of the same std; it differs from one discrete '
                   'Gaussian by at most tau (Kairouz, Liu, Steinke 2021), reported as '
                   'secure_aggregation.noise_approximation_tau')
    return notes

  def report(self) -> dict:
    """The guarantee so far: unit, adjacency, each adversary's epsilon, the
    substitution bound of the largest, and a statement in words."""
    c = self.config
    adversaries = {}
    for name, view in self.views.items():
      who = ADVERSARIES[name].format(colluders=self.colluders)
      if view.ledger is None:
        adversaries[name] = {'who': who, 'protected': False,
                             'why': 'central DP: the server adds the noise, so it sees '
                                    "each hospital's clear update"}
        continue
      ledger = view.ledger.report()
      adversaries[name] = {'who': who, 'protected': True, 'epsilon': ledger['epsilon'],
                           'amplified_by_hospital_sampling': view.amplified,
                           'per_unit': ledger['per_hospital'],
                           'non_private_rounds': ledger['non_private_rounds']}
    headline = max((n for n in adversaries if adversaries[n]['protected']),
                   key=lambda n: adversaries[n]['epsilon'])
    eps = adversaries[headline]['epsilon']
    sub_eps, sub_delta = accounting.substitution_bound(eps, self.delta)
    report = {
        'level': c.level, 'unit': _UNIT[c.level], 'adjacency': self.adjacency(),
        'accountant': c.accountant, 'epsilon': eps, 'delta': self.delta,
        'epsilon_adversary': headline,
        'noise_multiplier': self.noise_multiplier,
        'l2_norm_clip': c.l2_norm_clip,
        'per_hospital': adversaries[headline]['per_unit'],
        'non_private_rounds': adversaries[headline]['non_private_rounds'],
        'adversaries': adversaries,
        'substitution': {'epsilon': sub_eps, 'delta': sub_delta},
        'approximations': self.approximations(),
    }
    if c.level == 'record':
      report['patient_at_every_hospital_epsilon'] = self.views['everyone'].ledger.joint_epsilon()
    report['statement'] = self._statement(report)
    return report

  def _statement(self, report: dict) -> str:
    """The guarantee in words: unit, adjacency, adversary, and its limits."""
    eps, delta = report['epsilon'], self.delta
    ledger_statement = self.views[report['epsilon_adversary']].ledger.report()['statement']
    if not math.isfinite(eps):
      return ledger_statement
    parts = [f"{ledger_statement}; unit: {report['unit']}; against "
             f"{report['adversaries'][report['epsilon_adversary']]['who']}"]
    for name, adversary in report['adversaries'].items():
      if name == report['epsilon_adversary']:
        continue
      parts.append(f"against {adversary['who']}: " + (
          f"ε={adversary['epsilon']:.3g}" + (' (amplified by secret hospital sampling)'
                                            if adversary['amplified_by_hospital_sampling']
                                            else '')
          if adversary['protected'] else f"not protected ({adversary['why']})"))
    parts.append(f"if one {'record' if self.config.level == 'record' else 'hospital'} is "
                 f"replaced rather than added or removed: ε={report['substitution']['epsilon']:.3g}, "
                 f"δ={report['substitution']['delta']:.3g}")
    if self.config.level == 'record':
      parts.append('epsilon is per hospital: a patient with records at several hospitals '
                   'is protected by the composition of those hospitals\' guarantees (at '
                   f"every hospital: ε={report['patient_at_every_hospital_epsilon']:.3g})")
    else:
      n = len(self._data.hospitals)
      parts.append(f'with only {n} hospitals this is weak: ε={eps:.3g} lets an adversary\'s '
                   f'odds that a given hospital took part grow by up to e^ε = '
                   f'{math.exp(eps):.3g}x, and δ={delta:g} is not small against 1/{n}')
    parts.extend(report['approximations'])
    return '; '.join(parts)

  def released(self) -> dict[str, str]:
    """What a DP run releases, each with its protection."""
    test = 'not protected: computed on held-out test records, which no epsilon covers'
    hidden = 'not released: hiding the cohort is what amplification by hospital sampling needs'
    timing = (hidden + ('; every output is written after the last round, so only the run\'s '
                        'total duration is visible, to whoever saw it start or sees the output '
                        'folder\'s creation time: it grows with the cohorts drawn, and is not '
                        'accounted')
              if self.hides_cohort else
              'not protected: depend on the model size, the cohort and the machine, not on '
              'records')
    dropped = ({'rows dropped for missing values per hospital (summary.json data_description)':
                'not protected: exact counts of records with a missing cell, declared public '
                'like the training sizes (one patient\'s missing cell changes them)'}
               if 'rows dropped for missing values' in self._data.description else {})
    return {
        'model weights (saved_model, every round to the server)': f'accounted DP ({self.config.level} level)',
        'epsilon per round (TensorBoard, metrics.csv)': 'public: computed from the DP events only',
        'test-set accuracy and AUC per hospital and pooled': test,
        'training loss, accuracy and AUC': 'not released, not even to the server: under DP '
                                           'no hospital computes them for it',
        'hospital names, training and test sizes (summary.json, audit log)':
            'not protected: declared public (hence the substitution bound, which holds for '
            'a replacement of the same size)',
        **dropped,
        'hospitals per round, dropouts, aborts': (
            hidden if self.hides_cohort else
            'not protected: chosen without looking at records (public)'),
        'bytes per hospital, round seconds, wall seconds, event times': timing,
        'preprocessing (and the feature schema exported with the model)':
            'public by declaration, not computed by this run from the training records: '
            f"{self._data.preprocessing.get('source', '')}",
    }

  def releasable(self, metrics: dict) -> dict:
    """The round `metrics` with everything removed that `released` says is not
    released: training statistics always; under amplification everything that
    varies with the cohort's size (its count, the aggregator's measurements,
    the round's duration)."""
    if self.hides_cohort:
      return {k: v for k, v in metrics.items() if k in ('eval', 'privacy')}
    kept = {k: v for k, v in metrics.items() if k != 'train'}
    if 'aggregator' in metrics:
      kept['aggregator'] = {k: v for k, v in metrics['aggregator'].items()
                            if k in ('bytes_per_client', 'aborted', 'survivors', 'dropped')}
    return kept
