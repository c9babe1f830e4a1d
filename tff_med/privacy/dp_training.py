"""Differentially private federated training: the learning process, who takes part
each round, and the DP events each round really produces, for both levels.

- `record`: DP-SGD inside each hospital (`dp_sgd.py`). Accounting unit: each
  hospital; its event per round it joins is dp_sgd_event(batch_size / n_k,
  noise_multiplier, local steps). Hospitals are chosen as without DP.
- `client`: DP-FedAvg, `tff.aggregators.DifferentiallyPrivateFactory` over
  hospitals' model deltas (`build_unweighted_fed_avg` / `_fed_prox`). Every
  hospital joins a round independently with probability q = clients_per_round /
  num_hospitals (Poisson sampling, as the accountant assumes; q = 1 when all join
  every round). Accounting unit: the study; its event per round is TFF's own
  DP event of the aggregation, Poisson-sampled with q.

Schedules (record level): `every_round` noises every round; `first_round` and
`every_n` (noise in rounds 1, 1 + N, 1 + 2N, ...) train the other rounds
without noise or clipping, which releases un-noised updates of the same records:
the accountant records a NonPrivateDpEvent and epsilon is infinite.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import dp_accounting
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import differential_privacy as tff_dp

from tff_med.algorithms import (AlgorithmConfig, client_optimizer, client_weighting,
                                server_optimizer)
from tff_med.data.federated_data import FederatedData
from tff_med.models.tff_model import loss as model_loss
from tff_med.privacy import accounting
from tff_med.privacy import dp_sgd

LEVELS = ('none', 'record', 'client')
SCHEDULES = ('every_round', 'first_round', 'every_n')
CLIPPINGS = ('fixed', 'adaptive')
STUDY = 'all hospitals'  # The accounting unit of hospital-level DP.


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """`level`: none, record (DP-SGD per hospital) or client (DP-FedAvg).
  `noise_multiplier`: noise std / clip (None: calibrated from `target_epsilon`).
  `l2_norm_clip`: per-example (record) or per-hospital update (client) L2 clip;
  the initial clip with adaptive clipping. `target_delta`: None = default
  (record: largest power of ten below 1 / largest hospital's training rows;
  client: 1e-3). `max_epsilon`: budget; training stops before a round that
  would exceed it. `accountant`: rdp or pld. `clipping`: client level, fixed or
  adaptive. `schedule`, `every`: record level, which rounds are noised."""
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


class DpTraining:
  """Everything level-specific in a DP run. Construct before training: it
  validates the flags and calibrates the noise, raising ValueError naming the flag."""

  def __init__(self, config: PrivacyConfig, algorithm: AlgorithmConfig, data: FederatedData,
               rounds: int, clients_per_round: int, batch_size: int, local_epochs: int,
               log: Callable[[str], None] = print):
    self.config = config
    self._algorithm = algorithm
    self._data = data
    self._batch_size = batch_size
    self._local_epochs = local_epochs
    self._rounds = rounds
    self._num_train = {h: data.num_train(h) for h in data.hospitals}
    num_hospitals = len(data.hospitals)
    self._cohort_size = clients_per_round or num_hospitals
    self._check_flags()
    if config.level == 'record':
      self.delta = (config.target_delta if config.target_delta is not None
                    else accounting.default_record_delta(self._num_train))
      accounting.check_record_delta(self.delta, self._num_train)
      self.sampling_rates = {h: dp_sgd.sampling_rate(n, batch_size)
                             for h, n in self._num_train.items()}
    else:
      self.delta = config.target_delta if config.target_delta is not None else 1e-3
      if not 0 < self.delta < 1 / num_hospitals:
        raise ValueError(f'--target_delta={self.delta}: hospital-level DP needs 0 < delta '
                         f'< 1 / number of hospitals = {1 / num_hospitals:.3g}')
      self.sampling_rates = {STUDY: self._cohort_size / num_hospitals}
    if (config.level == 'client' and config.clipping == 'adaptive'
        and config.accountant == 'pld' and self.sampling_rates[STUDY] < 1):
      raise ValueError('--accountant=pld cannot account adaptive clipping with sampled '
                       'hospitals (a Poisson-sampled composed event); use --accountant=rdp')
    self.noise_multiplier = config.noise_multiplier
    if self.noise_multiplier is None:
      self.noise_multiplier = accounting.calibrate_noise_multiplier(
          config.target_epsilon, self.delta, config.accountant, self._planned_event_fns())
      log(f'calibrated noise multiplier {self.noise_multiplier:.4f} for epsilon '
          f'{config.target_epsilon} at delta {self.delta:g} ({config.accountant})')
    # Built now so that TFF's refusals (e.g. adaptive clipping on a small cohort)
    # come before training.
    self._factory = self._client_level_factory() if config.level == 'client' else None
    self.ledger = accounting.PrivacyLedger(
        config.level, config.accountant, self.delta, self.noise_multiplier,
        config.l2_norm_clip, self.sampling_rates)

  def _check_flags(self) -> None:
    c = self.config
    if c.level not in LEVELS[1:]:
      raise ValueError(f'--dp={c.level!r}: choose one of {LEVELS}')
    if c.accountant not in accounting.ACCOUNTANTS:
      raise ValueError(f'--accountant={c.accountant!r}: choose one of {accounting.ACCOUNTANTS}')
    if (c.noise_multiplier is None) == (c.target_epsilon is None):
      raise ValueError('give exactly one of --noise_multiplier and --target_epsilon')
    if c.noise_multiplier is not None and not c.noise_multiplier >= 0:
      raise ValueError(f'--noise_multiplier={c.noise_multiplier}: must be non-negative')
    if not c.l2_norm_clip > 0:
      raise ValueError(f'--l2_norm_clip={c.l2_norm_clip}: must be positive')
    if c.max_epsilon is not None and not c.max_epsilon > 0:
      raise ValueError(f'--max_epsilon={c.max_epsilon}: must be positive')
    if c.schedule not in SCHEDULES:
      raise ValueError(f'--dp_schedule={c.schedule!r}: choose one of {SCHEDULES}')
    if c.schedule == 'every_n' and c.every < 1:
      raise ValueError(f'--dp_every={c.every}: must be at least 1')
    if c.clipping not in CLIPPINGS:
      raise ValueError(f'--dp_clipping={c.clipping!r}: choose one of {CLIPPINGS}')
    if c.level == 'record':
      if self._algorithm.name == 'fedprox':
        raise ValueError('--dp=record runs DP-SGD on each hospital, which has no '
                         'proximal term: use --algorithm=fedavg, fedadam, fedyogi or '
                         'fedadagrad')
      if c.clipping != 'fixed':
        raise ValueError('--dp_clipping=adaptive applies to --dp=client; DP-SGD clips '
                         'each record at --l2_norm_clip')
    elif c.schedule != 'every_round':
      raise ValueError(f'--dp_schedule={c.schedule} applies to --dp=record; hospital-level '
                       'DP noises every round')

  def _planned_event_fns(self) -> dict[str, Callable[[float], dp_accounting.DpEvent]]:
    """Per unit: noise multiplier -> the event of the whole planned run (record
    level: the hospital joins every round, an upper bound)."""
    if self.config.level == 'record':
      return {h: (lambda sigma, h=h: accounting.dp_sgd_event(
          self.sampling_rates[h], sigma, self._rounds * self._steps(h)))
              for h in self._num_train}
    q = self.sampling_rates[STUDY]
    return {STUDY: lambda sigma: dp_accounting.SelfComposedDpEvent(
        accounting.sampled_round_event(dp_accounting.GaussianDpEvent(sigma), q),
        self._rounds)}

  def _steps(self, hospital: str) -> int:
    return dp_sgd.local_steps(self._num_train[hospital], self._batch_size, self._local_epochs)

  def is_noised(self, round_num: int) -> bool:
    if self.config.schedule == 'first_round':
      return round_num == 1
    if self.config.schedule == 'every_n':
      return (round_num - 1) % self.config.every == 0
    return True

  # Processes.
  def client_work(self, model_fn, noised: bool = True):
    """Record level: the DP-SGD client work (un-noised and unclipped if not `noised`)."""
    noise_multiplier, clip = ((self.noise_multiplier, self.config.l2_norm_clip) if noised
                              else (0.0, 1e30))
    return dp_sgd.build_dp_sgd_client_work(
        model_fn, model_loss, self._algorithm.client_lr, clip, noise_multiplier,
        self._batch_size, self._local_epochs, client_weighting(self._algorithm))

  def build_processes(self, model_fn, model_aggregator=None, client_factory=None) -> tuple:
    """(process for noised rounds, process for un-noised rounds or None); both
    share one state type, so a run may alternate between them.

    Args:
      model_aggregator: record level: weighted factory for the DP-SGD updates
        (e.g. a secure sum); default TFF's weighted mean.
      client_factory: client level: replaces DifferentiallyPrivateFactory (e.g.
        TFF's distributed-DP secure aggregator); the caller accounts its events.
    """
    if self.config.level == 'client':
      kwargs = dict(model_fn=model_fn, client_optimizer_fn=client_optimizer(self._algorithm),
                    server_optimizer_fn=server_optimizer(self._algorithm),
                    model_aggregator=client_factory or self._factory)
      if self._algorithm.name == 'fedprox':
        return tff.learning.algorithms.build_unweighted_fed_prox(
            proximal_strength=self._algorithm.fedprox_mu, **kwargs), None
      return tff.learning.algorithms.build_unweighted_fed_avg(**kwargs), None

    def build(noised):
      return dp_sgd.build_dp_sgd_learning_process(
          model_fn, self.client_work(model_fn, noised), server_optimizer(self._algorithm),
          model_aggregator)

    return build(True), None if self.config.schedule == 'every_round' else build(False)

  def _client_level_factory(self):
    factory_cls = tff.aggregators.DifferentiallyPrivateFactory
    expected = float(self._cohort_size)
    if self.config.clipping == 'fixed':
      return factory_cls.gaussian_fixed(self.noise_multiplier, expected,
                                        self.config.l2_norm_clip)
    try:
      return factory_cls.gaussian_adaptive(self.noise_multiplier, expected,
                                           initial_l2_norm_clip=self.config.l2_norm_clip)
    except ValueError as e:
      raise ValueError(
          f'--dp_clipping=adaptive refuses a cohort of {self._cohort_size} hospitals at '
          f'noise multiplier {self.noise_multiplier:.3g}: adaptive clipping spends part '
          'of the privacy budget on a noised count of clipped hospitals, and with so few '
          'hospitals that count cannot be noised enough (TFF: '
          f'"{e}"). Use --dp_clipping=fixed with --l2_norm_clip, or more hospitals per '
          'round.') from e

  # Rounds.
  def cohort(self, rng: np.random.Generator, hospitals: Sequence[str]) -> list[str]:
    """Hospitals of one round (client level: independent Poisson draws)."""
    q = self.sampling_rates.get(STUDY)
    if self.config.level == 'client' and q < 1:
      return [h for h in hospitals if rng.random() < q]
    return list(hospitals)

  def client_dataset(self, hospital: str) -> tf.data.Dataset:
    """Record level: all of a hospital's records in one batch (DP-SGD samples them)."""
    return (self._data.train.create_tf_dataset_for_client(hospital)
            .batch(self._num_train[hospital]))

  def round_events(self, cohort: Sequence[str], round_num: int,
                   aggregation_event: dp_accounting.DpEvent | None = None
                   ) -> dict[str, list[dp_accounting.DpEvent]]:
    """DP events of one round per unit. Client level: pass TFF's aggregation
    event once the round ran (None before it: the planned Gaussian event)."""
    if self.config.level == 'client':
      event = aggregation_event or dp_accounting.GaussianDpEvent(self.noise_multiplier)
      return {STUDY: [accounting.sampled_round_event(event, self.sampling_rates[STUDY])]}
    if not self.is_noised(round_num):
      return {h: [dp_accounting.NonPrivateDpEvent()] for h in cohort}
    return {h: [accounting.dp_sgd_event(self.sampling_rates[h], self.noise_multiplier,
                                        self._steps(h))] for h in cohort}

  def would_exceed_budget(self, cohort: Sequence[str], round_num: int) -> float | None:
    """The worst epsilon after this round if it exceeds --max_epsilon, else None."""
    if self.config.max_epsilon is None:
      return None
    after = self.ledger.max_epsilon(self.round_events(cohort, round_num))
    return after if after > self.config.max_epsilon else None

  def record_round(self, cohort: Sequence[str], round_num: int, state=None,
                   noisy_steps: int | None = None,
                   aggregation_event: dp_accounting.DpEvent | None = None) -> None:
    """Records the round that ran. Client level: the aggregation's DP event is
    `aggregation_event` if given, else read from TFF's DP aggregator `state`.
    Record level: checks the client work's own count of noisy steps against the
    accounted ones."""
    if self.config.level == 'client':
      event = aggregation_event
      if cohort and event is None:
        event = tff_dp.extract_dp_event_from_state(state.aggregator)
      for unit, events in self.round_events(cohort, round_num, event).items():
        self.ledger.record(unit, events[0])
      return
    events = self.round_events(cohort, round_num)
    expected = sum(self._steps(h) for h in cohort)
    if noisy_steps is not None and noisy_steps != expected:
      raise RuntimeError(f'round {round_num}: hospitals took {noisy_steps} DP-SGD steps, '
                         f'accounting expected {expected}')
    for h in cohort:
      self.ledger.record(h, events[h][0], steps=self._steps(h) if self.is_noised(round_num) else 0)

  def epsilons(self) -> dict:
    """{'epsilon': worst unit, 'per_hospital': {unit: epsilon}} for TensorBoard."""
    per_unit = {u: self.ledger.epsilon(u) for u in self.sampling_rates}
    return {'epsilon': max(per_unit.values()), 'per_hospital': per_unit}
