"""Hospital-level DP (`privacy.level=client`): each hospital's whole dataset is
the unit. Two aggregations (`DpAccount` says who each epsilon is against):

- central (secure_agg.mode=none): DP-FedAvg, TFF's unweighted FedAvg with
  `tff.aggregators.DifferentiallyPrivateFactory` (fixed or adaptive clip) as its
  aggregator; hospitals join by Poisson sampling from OS randomness, and a round
  nobody joins still releases its noise;
- masking: each hospital clips its update and adds a discrete Gaussian noise
  share before masking (`MaskingPlan`); every round is sized for one coalition
  of `colluders` hospitals.

secure_agg.mode=tff is refused: TFF's distributed-DP aggregator estimates its
clip from a count of clipped hospitals that it noises on the server after the
secure sum, so the server would see that count exactly (and it does not build
in TFF 0.87 here).
"""

from collections.abc import Callable

import tensorflow_federated as tff

from tff_med.mechanisms.dp_plan import DpPlan
from tff_med.mechanisms.learning import plain_aggregation
from tff_med.mechanisms.masking import fedavg_client_work, masking_aggregation
from tff_med.mechanisms.round_plan import Round, RoundResult
from tff_med.mechanisms.task import Task
from tff_med.privacy.dp_account import DpAccount
from tff_med.privacy.training_metrics import no_training_metrics


class HospitalLevelDp(DpPlan):
  """DP-FedAvg (`masking` False) or distributed DP under masking."""

  def __init__(self, task: Task, masking: bool, aggregator=None,
               log: Callable[[str], None] = print, central=plain_aggregation):
    """`central`: the aggregation that runs DP-FedAvg (default in process)."""
    config, n = task.config, len(task.data.hospitals)
    privacy, secure = config.privacy, config.secure_agg
    if aggregator is not None:
      raise ValueError('privacy.level=client builds its own DP aggregator and accounts for '
                       'it; a user aggregator cannot be combined with it (use '
                       'privacy.level=record, whose DP-SGD updates it may aggregate)')
    colluders = 0
    if masking:
      if 0 < config.clients_per_round < n and secure.threshold:
        raise ValueError(f'secure_agg.threshold={secure.threshold} with privacy.level=client '
                         'and clients_per_round: cohort sizes vary, so the threshold must '
                         'follow each cohort (leave secure_agg.threshold at 0)')
      if privacy.clipping == 'adaptive':
        raise ValueError('secure_agg.mode=masking with privacy.level=client clips each '
                         'hospital\'s update at a fixed privacy.l2_norm_clip: use '
                         'privacy.clipping=fixed')
      colluders = secure.colluders_for(secure.threshold_for(config.clients_per_round or n))
    self.dp = DpAccount(privacy, config.algorithm, task.data, config.rounds,
                        config.clients_per_round, config.batch_size, config.local_epochs,
                        log, aggregation='masking' if masking else 'central',
                        colluders=colluders)
    if self.dp.hides_cohort and (config.dropouts or config.min_clients):
      raise ValueError(f'dropouts={config.dropouts} and min_clients={config.min_clients} '
                       'with privacy.level=client and sampled hospitals: a skipped round or '
                       'a fixed number of dropouts would tell observers about the secret '
                       'cohort that amplification rests on; set both to 0')
    self.task = task
    if masking:
      self._masking = masking_aggregation(
          task, fedavg_client_work(task, no_training_metrics),
          l2_norm_clip=privacy.l2_norm_clip, noise_multiplier=self.dp.noise_multiplier,
          colluders=colluders)
      inner = self._masking
    else:
      self._masking = None
      inner = central(task, aggregator=self._central_factory(), weighted=False,
                      metrics_aggregator=no_training_metrics, runs_empty_rounds=True)
    super().__init__(inner, self.dp)

  def _central_factory(self) -> tff.aggregators.UnweightedAggregationFactory:
    """TFF's DP factory, built now so that its refusals come before training."""
    factory_cls, privacy = tff.aggregators.DifferentiallyPrivateFactory, self.dp.config
    expected = float(self.task.config.clients_per_round or len(self.task.data.hospitals))
    if privacy.clipping == 'fixed':
      return factory_cls.gaussian_fixed(self.dp.noise_multiplier, expected,
                                        privacy.l2_norm_clip)
    try:
      return factory_cls.gaussian_adaptive(self.dp.noise_multiplier, expected,
                                           initial_l2_norm_clip=privacy.l2_norm_clip)
    except ValueError as e:
      raise ValueError(
          f'privacy.clipping=adaptive refuses a cohort of {expected:g} hospitals at noise '
          f'multiplier {self.dp.noise_multiplier:.3g}: adaptive clipping spends part of the '
          'privacy budget on a noised count of clipped hospitals, and with so few hospitals '
          f'that count cannot be noised enough (TFF: "{e}"). Use privacy.clipping=fixed '
          'with privacy.l2_norm_clip, or more hospitals per round.') from e

  def cohort(self, hospitals, rng):
    """Poisson sampling from OS randomness (`DpAccount.cohort`), never `rng`."""
    del rng
    return self.dp.cohort(hospitals)

  def account(self, round_: Round, result: RoundResult) -> None:
    """Charges the hospitals whose updates were released: against the server, the
    noise the masked round really carried; central DP reads TFF's own event."""
    server_event = self._masking.noise_event(round_, result) if self._masking else None
    self.dp.record_round(round_.reporting if result.applied else [], round_.number,
                         result.state, server_event=server_event)
    self.inner.account(round_, result)
