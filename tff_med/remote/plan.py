"""A `LearningPlan` whose hospitals are nodes (`tff_med.remote.node`): each
round's computation runs across the reporting hospitals' workers, each building
its dataset from its own records (`tff_med.remote.records`); the coordinator
sends handles and the model, and receives what the plan's aggregation sends."""

import concurrent.futures
from collections.abc import Mapping

import grpc
import tensorflow_federated as tff

from tff_med.mechanisms.learning import LearningPlan
from tff_med.mechanisms.round_plan import PlanWrapper, Round
from tff_med.remote import records
from tff_med.remote.context import Connection, NodeUnreachable, cohort_context, hospital_context

_PROBE_SECONDS = 5.0


class RemoteHospitals(PlanWrapper):
  """`inner`'s rounds run on the hospitals' nodes over `connections`
  ({hospital: `context.connect(...)`}); server-only computations (initialise,
  weights) run in the coordinator's own context. A node that stops answering
  mid-round stops the run with NodeUnreachable naming it; the saved state
  resumes once it is back."""

  def __init__(self, inner: LearningPlan, connections: Mapping[str, Connection]):
    missing = [h for h in inner.task.data.hospitals if h not in connections]
    if missing:
      raise ValueError(f'hospitals {", ".join(missing)}: no node address given')
    config = inner.task.config
    dataset = records.dataset_computation(inner.task.data.feature_shape, config.batch_size,
                                          config.local_epochs, config.seed)
    super().__init__(inner.with_client_data(dataset, records.handle))
    self._channels = {h: c.channel for h, c in connections.items()}
    self._contexts = {h: hospital_context(c) for h, c in self._channels.items()}

  def run_round(self, state, round_: Round):
    if not round_.reporting:
      return self.inner.run_round(state, round_)
    # TFF's remote contexts retry a call to a node that went away for ever, so the
    # round runs in a thread while this one watches the nodes: one that stays
    # unreachable for _PROBE_SECONDS has its channel closed, which ends the call.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      future = pool.submit(self._run_in_cohort, state, round_)
      while True:
        try:
          return future.result(timeout=_PROBE_SECONDS)
        except concurrent.futures.TimeoutError:
          down = [h for h in round_.reporting if not self._answers(h)]
          if down:
            for hospital in down:
              self._channels[hospital].close()
            concurrent.futures.wait([future])
            raise NodeUnreachable(
                f'round {round_.number}: hospital {", ".join(down)}\'s node stopped answering; '
                'the run stops here and resumes from its last saved round once the node is '
                'back') from future.exception()

  def _run_in_cohort(self, state, round_: Round):
    # The context stack is per thread: install the cohort's context in this one.
    with tff.framework.get_context_stack().install(
        cohort_context(self._contexts, round_.reporting)):
      return self.inner.run_round(state, round_)

  def _answers(self, hospital: str) -> bool:
    try:
      grpc.channel_ready_future(self._channels[hospital]).result(timeout=_PROBE_SECONDS)
      return True
    except grpc.FutureTimeoutError:
      return False
