"""What both DP mechanisms add to their inner plan: the budget check before a
round, epsilon in every release, the privacy block of the summary, and the
ledger in the program state. `DpAccount` (`tff_med.privacy.dp_account`) does
the accounting; subclasses build the inner plan and charge each round."""

from tff_med.mechanisms.round_plan import PlanWrapper, Round, RoundPlan
from tff_med.privacy.dp_account import DpAccount


class DpPlan(PlanWrapper):
  """A DP mechanism over `inner`, accounted by `dp`."""

  def __init__(self, inner: RoundPlan, dp: DpAccount):
    super().__init__(inner)
    self.dp = dp

  def stop_reason(self, state, round_: Round) -> str | None:
    after = self.dp.would_exceed_budget(round_.cohort, round_.number, state)
    if after is None:
      return self.inner.stop_reason(state, round_)
    reserve = (' with the personalisation fine-tuning reserved'
               if self.dp.personal_epochs else '')
    return (f'round {round_.number} could raise epsilon to {after:.4g} (its worst case'
            f'{reserve}), above privacy.max_epsilon={self.dp.config.max_epsilon}; '
            'stopped before it')

  def releasable(self, metrics: dict) -> dict:
    return {**self.dp.releasable(self.inner.releasable(metrics)),
            'privacy': self.dp.epsilons()}

  @property
  def hides_cohort(self) -> bool:
    return self.dp.hides_cohort or self.inner.hides_cohort

  def summary(self) -> dict:
    """The inner plan's, with the DP guarantee (the loop replaces
    `stopped_early` when the budget stopped the run)."""
    return {**self.inner.summary(), 'stopped_early': False,
            'privacy': {**self.dp.report(), 'released': self.dp.released()}}

  def ledger(self) -> dict:
    return self.dp.ledger()

  def checkpoint(self) -> dict:
    return {**self.inner.checkpoint(), 'ledger': self.dp.checkpoint()}

  def restore(self, saved: dict) -> None:
    self.inner.restore(saved)
    self.dp.restore(saved['ledger'])
