"""Record-level DP (`privacy.level=record`): DP-SGD inside each hospital, over
any aggregation (plain, TFF secure sum, masking).

The wrapper builds its inner plan with the aggregation it is given, feeding it
DP-SGD's client work (`privacy.dp_sgd`) and each hospital's records as one batch
(DP-SGD samples them itself); with an un-noised schedule it keeps a second
inner plan without noise or clipping, sharing the state type. `DpAccount` checks
the privacy fields, calibrates the noise and keeps the ledger: each round, every
hospital whose update was released is charged its DP-SGD event.
"""

from collections.abc import Callable

import tensorflow as tf

from tff_med.algorithms import client_weighting
from tff_med.mechanisms.dp_plan import DpPlan
from tff_med.mechanisms.round_plan import Round, RoundResult
from tff_med.mechanisms.task import Task
from tff_med.models.tff_model import loss as model_loss
from tff_med.privacy import dp_sgd
from tff_med.privacy.dp_account import DpAccount

Aggregation = Callable[..., object]  # (task, client_work, dataset_fn, aggregator) -> plan


class RecordLevelDp(DpPlan):
  """DP-SGD in every hospital; epsilon per patient record, against everyone."""

  def __init__(self, task: Task, aggregation: Aggregation, aggregator=None,
               log: Callable[[str], None] = print):
    config = task.config
    self.task = task
    self.dp = DpAccount(config.privacy, config.algorithm, task.data, config.rounds,
                        config.clients_per_round, config.batch_size, config.local_epochs, log,
                        personal_epochs=config.personalize.finetune_epochs)
    noised = aggregation(task, self._client_work(True), self._dataset, aggregator)
    self._unnoised = (None if config.privacy.schedule == 'every_round' else
                      aggregation(task, self._client_work(False), self._dataset, aggregator))
    self._charged_ahead = None  # The round `charge_ahead` charged, if any.
    super().__init__(noised, self.dp)

  def _client_work(self, noised: bool):
    """DP-SGD's client work (un-noised and unclipped if not `noised`)."""
    config = self.task.config
    noise_multiplier, clip = ((self.dp.noise_multiplier, config.privacy.l2_norm_clip)
                              if noised else (0.0, 1e30))
    return dp_sgd.build_dp_sgd_client_work(
        self.task.model_fn, model_loss, config.algorithm.client_lr, clip, noise_multiplier,
        config.batch_size, config.local_epochs, client_weighting(config.algorithm))

  def _dataset(self, hospital: str, round_num: int) -> tf.data.Dataset:
    """All of a hospital's records in one batch (DP-SGD samples them)."""
    del round_num
    return (self.task.data.train.create_tf_dataset_for_client(hospital)
            .batch(self.task.data.num_train(hospital)))

  def run_round(self, state, round_: Round) -> RoundResult:
    plan = self.inner if self.dp.is_noised(round_.number) else self._unnoised
    return plan.run_round(state, round_)

  def charge_ahead(self, round_: Round) -> bool:
    """Where updates leave this process mid-round (hospital nodes), charges the
    reporting hospitals before the round runs (the loop saves it first), so
    that a round cut short, or rerun after the coordinator was killed, is never
    under-charged; `account` then charges nothing more for it."""
    if not self.inner.releases_mid_round:
      return self.inner.charge_ahead(round_)
    self.dp.record_round(round_.reporting, round_.number)
    self._charged_ahead = round_.number
    return True

  def account(self, round_: Round, result: RoundResult) -> None:
    """Charges every hospital whose update was released (not those that dropped
    out, nor any in a skipped round; in an aborted one, those whose update may
    have reached the server: `result.released`), unless `charge_ahead` did."""
    if self._charged_ahead != round_.number:
      self.dp.record_round(round_.reporting if result.applied else result.released,
                           round_.number, result.state,
                           noisy_steps=result.metrics.get('noisy_steps'),
                           trained=result.trained)
    self.inner.account(round_, result)
