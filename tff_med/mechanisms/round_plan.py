"""The round protocol: what a mechanism of a federated study does in one round.

The training loop (`tff_med.training`) knows only this interface. Each round it
asks the plan for a cohort, draws the hospitals of it that drop out (they train
but never report) and adds those the plan cannot reach (`unreachable`), asks
whether the round may run (`stop_reason`: e.g. a privacy budget), lets the plan
charge what the round may release whatever happens to it (`charge_ahead`, saved
first), runs it (`run_round`) unless fewer than `min_clients` report, lets the
plan account for what the round released (`account`), and releases what the
plan says is releasable. Program state is the plan's process state plus `checkpoint()`.

Mechanisms compose by wrapping, as `tff.aggregators` factories nest and as
Flower's strategy wrappers do: a `PlanWrapper` holds an inner plan, overrides
what it changes and passes the rest through (attribute lookups included, so a
mechanism-specific query such as `noise_event` reaches the plan that has it).
"""

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.audit_log import weights_sha256
from tff_med.evaluation import evaluate


@dataclasses.dataclass(frozen=True)
class Round:
  """`number`: 1-based; `cohort`: hospitals asked to train; `reporting`: those of
  the cohort whose update reaches the aggregation (the rest dropped out)."""
  number: int
  cohort: tuple[str, ...]
  reporting: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RoundResult:
  """`state`: the plan's state after the round; `metrics`: nested scalars, before
  `releasable`; `applied`: False when the model did not change (skipped or
  aborted round: nothing of the hospitals' updates was released); `trained`:
  the hospitals that trained (the reporting ones, or the whole cohort where
  hospitals drop out after training, as under masking); `released`: in a
  round not applied, the hospitals whose updates may still have reached the
  server (a round on hospital nodes that failed part-way), which record-level
  DP charges; `note`: a line for the progress log (e.g. why a round aborted)."""
  state: Any
  metrics: dict
  applied: bool = True
  trained: tuple[str, ...] = ()
  released: tuple[str, ...] = ()
  note: str = ''


class RoundPlan(abc.ABC):
  """One mechanism's rounds. Subclasses set `task` (`mechanisms.task.Task`) and
  implement the abstract methods; the others behave as a plan with one global
  model, seeded cohorts and no privacy accounting."""

  @abc.abstractmethod
  def initialize(self) -> Any:
    """The state before round 1 (a structure `tff.program` can save)."""

  def cohort(self, hospitals: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The hospitals asked to train this round (`rng`: the run's seeded generator):
    `task.sample`, clients_per_round uniformly without replacement."""
    return self.task.sample(hospitals, rng)

  def unreachable(self, cohort: Sequence[str]) -> set[str]:
    """The hospitals of `cohort` that cannot train this round (a node that is
    down): they drop out. None here; `remote.plan.RemoteHospitals` asks its nodes."""
    del cohort
    return set()

  @abc.abstractmethod
  def run_round(self, state: Any, round_: Round) -> RoundResult:
    """Trains on `round_.cohort`, aggregates `round_.reporting`'s updates."""

  def models(self, state: Any) -> dict[str, tf.keras.Model]:
    """Name -> the Keras model(s) `state` holds: one 'global' model here (built
    now, as TFF builds its models in graphs); the local baseline has one per
    hospital."""
    model = self.task.keras_model_fn()
    self.get_model_weights(state).assign_weights_to(model)
    return {'global': model}

  def evaluate(self, state: Any) -> dict:
    """Test-set evaluation (`tff_med.evaluation.evaluate`) of the global model;
    plans without one override this."""
    return evaluate(self.models(state)['global'], self.task.data)

  def get_model_weights(self, state: Any) -> tff.learning.models.ModelWeights:
    raise NotImplementedError(f'{type(self).__name__} has no single global model')

  def set_model_weights(self, state: Any, weights: tff.learning.models.ModelWeights) -> Any:
    raise NotImplementedError(f'{type(self).__name__} has no single global model')

  def stop_reason(self, state: Any, round_: Round) -> str | None:
    """Why the run must stop before `round_` (None: it may run)."""
    del state, round_
    return None

  def skip_round(self, state: Any, round_: Round) -> RoundResult:
    """The result of a round that does not run (too few hospitals report)."""
    del round_
    return RoundResult(state, {}, applied=False)

  def charge_ahead(self, round_: Round) -> bool:
    """Charges, before it runs, what `round_` may release whatever happens to it
    (updates that leave the process mid-round); True if it charged anything,
    which the loop then saves before running the round. Nothing here."""
    del round_
    return False

  @property
  def releases_mid_round(self) -> bool:
    """True where updates leave this process while the round runs (hospital
    nodes): a round cut short may already have released them."""
    return False

  def account(self, round_: Round, result: RoundResult) -> None:
    """Records what the round released (DP events); nothing without DP."""
    del round_, result

  def releasable(self, metrics: dict) -> dict:
    """The round's metrics as they may be released (plus, e.g., epsilon so far)."""
    return metrics

  def ledger(self) -> dict:
    """The DP account for the audit log (`DpAccount.ledger`); {} without DP."""
    return {}

  def model_hashes(self, state: Any) -> dict[str, str]:
    """Name (as `models`) -> SHA-256 of that model's weights in `state`
    (`audit_log.weights_sha256` over trainable then non-trainable weights)."""
    weights = self.get_model_weights(state)
    return {'global': weights_sha256([*weights.trainable, *weights.non_trainable])}

  @property
  def secure_sums(self) -> bool:
    """True where the plan runs TFF secure sums (only TFF's test context runs them)."""
    return False

  @property
  def hides_cohort(self) -> bool:
    """True where privacy rests on the cohort staying secret: the loop then holds
    every release until the end and reports no times."""
    return False

  def summary(self) -> dict:
    """Fields this plan adds to summary.json (e.g. 'privacy', 'secure_aggregation')."""
    return {}

  def checkpoint(self) -> dict:
    """JSON-able state beyond the process state (e.g. the privacy ledger)."""
    return {}

  def restore(self, saved: dict) -> None:
    """Continues from `checkpoint()`'s value."""
    del saved


class PlanWrapper(RoundPlan):
  """A mechanism over an inner plan: every method passes through unless overridden."""

  def __init__(self, inner: RoundPlan):
    self.inner = inner

  def __getattr__(self, name):
    if name == 'inner':  # Not yet set: avoid recursing.
      raise AttributeError(name)
    return getattr(self.inner, name)

  def initialize(self):
    return self.inner.initialize()

  def cohort(self, hospitals, rng):
    return self.inner.cohort(hospitals, rng)

  def unreachable(self, cohort):
    return self.inner.unreachable(cohort)

  def run_round(self, state, round_):
    return self.inner.run_round(state, round_)

  def models(self, state):
    return self.inner.models(state)

  def evaluate(self, state):
    return self.inner.evaluate(state)

  def get_model_weights(self, state):
    return self.inner.get_model_weights(state)

  def set_model_weights(self, state, weights):
    return self.inner.set_model_weights(state, weights)

  def stop_reason(self, state, round_):
    return self.inner.stop_reason(state, round_)

  def skip_round(self, state, round_):
    return self.inner.skip_round(state, round_)

  def charge_ahead(self, round_):
    return self.inner.charge_ahead(round_)

  @property
  def releases_mid_round(self):
    return self.inner.releases_mid_round

  def account(self, round_, result):
    self.inner.account(round_, result)

  def releasable(self, metrics):
    return self.inner.releasable(metrics)

  def ledger(self):
    return self.inner.ledger()

  def model_hashes(self, state):
    return self.inner.model_hashes(state)

  @property
  def secure_sums(self):
    return self.inner.secure_sums

  @property
  def hides_cohort(self):
    return self.inner.hides_cohort

  def summary(self):
    return self.inner.summary()

  def checkpoint(self):
    return self.inner.checkpoint()

  def restore(self, saved):
    self.inner.restore(saved)
