"""Running a plan's rounds on hospital nodes (`tff_med.remote.node`).

`on_nodes(aggregation, connections)` is an aggregation (as in
`mechanisms.plans`) whose plans run each round across the reporting
hospitals' workers, each building its dataset from its own records
(`tff_med.remote.records`): the coordinator sends handles and the model, and
receives what the aggregation sends; test metrics are computed on the nodes.
`node_data(connections)` is the coordinator's `NodeData`, read from the
nodes' manifests.
"""

import concurrent.futures
import dataclasses
import json
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import tensorflow_federated as tff
from tensorflow_federated.proto.v0 import executor_pb2, executor_pb2_grpc

from tff_med.algorithms import BASELINES
from tff_med.data.errors import DataError
from tff_med.evaluation import mean_over_hospitals
from tff_med.mechanisms.learning import LearningPlan
from tff_med.mechanisms.round_plan import PlanWrapper, Round
from tff_med.remote import records
from tff_med.remote.context import (Connection, NodeUnreachable, cohort_context,
                                    coordinator_context, hospital_context, node_context)
from tff_med.remote.node_data import NodeData

_PROBE_SECONDS = 5.0


def node_data(connections: Mapping[str, Connection]) -> NodeData:
  """The hospitals' `NodeData`, from the manifest each node serves."""
  read = records.manifest_computation()
  manifests = {}
  for hospital, connection in connections.items():
    try:
      with tff.framework.get_context_stack().install(node_context(connection.counted)):
        manifests[hospital] = json.loads(read(hospital))
    except grpc.RpcError as e:
      raise DataError(f'hospital {hospital}: its node serves no manifest ({e.code().name}: '
                      f'{e.details()})') from None
    except ValueError as e:
      raise DataError(f'hospital {hospital}: its manifest is not JSON ({e})') from None
  return NodeData.from_manifests(manifests)


def check_config(config) -> None:
  """ValueError naming the `TrainConfig` field that hospital nodes cannot run."""
  refused = {
      'algorithm.name': (config.algorithm.name in BASELINES,
                         'is a baseline that trains on records in one place (or each '
                         'hospital alone): run it inside each hospital'),
      'secure_agg.mode': (config.secure_agg.mode == 'tff',
                          'runs only in TFF\'s test context, which lowers secure sums to '
                          'plain sums; TFF\'s remote runtime does not run them'),
      'attack.name': (config.attack.name != 'none',
                      'is a simulated attack, for in-process research only'),
      'personalize.method': (config.personalize.method != 'none',
                             'fine-tunes on records in the coordinator\'s process'),
  }
  if config.secure_agg.mode == 'masking':
    refused['secure_agg.mode'] = (True, (
        'runs the masking parties\' Python cryptography, which TFF\'s workers (TensorFlow '
        'graphs only) cannot run: in the coordinator\'s process it would hold every '
        'hospital\'s keys, so it is refused (see the README)'))
  if config.privacy.level == 'client' and config.clients_per_round:
    refused['clients_per_round'] = (True, (
        'with privacy.level=client amplifies by a secret cohort, but which nodes the '
        'coordinator contacts each round is visible on the network'))
  for field, (is_refused, why) in refused.items():
    if is_refused:
      value = getattr(config, field.split('.')[0])
      value = getattr(value, field.split('.')[1]) if '.' in field else value
      raise ValueError(f'{field}={value} with hospital nodes: it {why}')


def on_nodes(aggregation, connections: Mapping[str, Connection]):
  """`aggregation` ((task, client_work, dataset_fn, aggregator, **kwargs) ->
  LearningPlan) with its plans' rounds run on the nodes (`RemoteHospitals`)."""

  def build(task, client_work=None, dataset_fn=None, aggregator=None, **kwargs):
    return RemoteHospitals(aggregation(task, client_work, dataset_fn, aggregator, **kwargs),
                           connections)

  return build


def _probe(channels: Mapping[str, grpc.Channel], hospitals: Sequence[str]) -> set[str]:
  """The `hospitals` whose worker does not answer a call within _PROBE_SECONDS
  (a connected channel is not enough: a hung worker or proxy keeps it open).
  The call asks the worker for an executor without cardinalities, which a live
  worker refuses at once (NOT_FOUND), creating nothing."""
  calls = {}
  for hospital in hospitals:
    try:
      stub = executor_pb2_grpc.ExecutorGroupStub(channels[hospital])
      calls[hospital] = stub.GetExecutor.future(executor_pb2.GetExecutorRequest(),
                                                timeout=_PROBE_SECONDS)
    except ValueError:  # The channel was closed.
      calls[hospital] = None
  down = set()
  for hospital, call in calls.items():
    if call is None:
      down.add(hospital)
      continue
    try:
      call.result()
    except grpc.RpcError as e:
      if e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
        down.add(hospital)
  return down


class RemoteHospitals(PlanWrapper):
  """`inner`'s rounds run on the hospitals' nodes over `connections`
  ({hospital: `context.connect(...)`}); server-only computations (initialise,
  weights, a round nobody reports in) run in the coordinator's own context.

  Failures: a cohort member whose node does not answer when the round starts
  is a dropout where `min_clients` is set (the loop skips the round if too few
  are left), and stops the run with NodeUnreachable naming it where it is not.
  A node that stops answering during a round aborts the round (model
  unchanged; `released`: every hospital asked, whose updates may have reached
  the coordinator); the next round then finds it down. The saved state resumes
  once the node is back.

  metrics['network']: the mean bytes of TFF's gRPC messages (serialised, before
  TLS) from and to a reporting hospital in the round."""

  def __init__(self, inner: LearningPlan, connections: Mapping[str, Connection]):
    data, config = inner.task.data, inner.task.config
    missing = [h for h in data.hospitals if h not in connections]
    if missing:
      raise ValueError(f'hospitals {", ".join(missing)}: no node address given')
    # Record-level DP's client work takes every record in one batch (DP-SGD samples).
    dataset = records.dataset_computation(data.feature_shape, config.batch_size,
                                          config.local_epochs, config.seed,
                                          one_batch=config.privacy.level == 'record')
    super().__init__(inner.with_client_data(dataset, records.handle))
    self._connections = connections
    self._contexts, self._node_contexts = {}, {}
    for hospital in connections:
      self._reconnect(hospital, reopen=False)
    self._coordinator = coordinator_context(config.max_concurrent_computation_calls)
    self._evaluate = records.evaluation_computation(
        inner.task.model_fn, inner.process.get_model_weights.type_signature.result,
        data.feature_shape)

  @property
  def releases_mid_round(self) -> bool:
    return True

  def unreachable(self, cohort):
    return self._down(cohort, 'the run stops here (with min_clients set, such a hospital '
                      'drops out of the round instead)') | self.inner.unreachable(cohort)

  def _down(self, hospitals: Sequence[str], consequence: str) -> set[str]:
    """Those of `hospitals` whose node does not answer now; NodeUnreachable
    naming them, saying `consequence`, where min_clients is not set."""
    down = _probe({h: c.channel for h, c in self._connections.items()}, hospitals)
    if down and not self.inner.task.config.min_clients:
      raise NodeUnreachable(
          f'hospital {", ".join(sorted(down))}\'s node does not answer: {consequence}; the '
          'run resumes from its last saved round once the node is back')
    return down

  def run_round(self, state, round_: Round):
    if not round_.reporting:
      return self.inner.run_round(state, round_)
    before = {h: self._connections[h].traffic() for h in round_.reporting}
    try:
      result = self._watched(round_.reporting, f'round {round_.number}',
                             self._run_in_cohort, state, round_)
    except NodeUnreachable as e:
      # Aborted: the model is unchanged, but the others' updates may have reached
      # the coordinator, so record-level DP charges every hospital asked.
      return dataclasses.replace(self.inner.skip_round(state, round_),
                                 released=round_.reporting, note=f'aborted: {e}')
    moved = np.array([np.subtract(self._connections[h].traffic(), before[h])
                      for h in round_.reporting], float)
    return dataclasses.replace(result, metrics={
        **result.metrics, 'network': {'bytes_from_hospital': float(moved[:, 1].mean()),
                                      'bytes_to_hospital': float(moved[:, 0].mean())}})

  def evaluate(self, state) -> dict:
    """Each hospital's test metrics, computed on its node (`records.evaluation_computation`):
    per hospital and their mean, and the pooled accuracy (weighted by test
    size). The pooled AUC is NaN: it needs every hospital's logits in one
    place, which nodes do not send. With min_clients set, a hospital whose node
    does not answer gets NaN metrics (so do the means); without, the run stops."""
    weights = self.get_model_weights(state)
    data = self.task.data
    down = self._down(data.hospitals, 'its test metrics cannot be computed')
    per_hospital = {}
    for hospital in data.hospitals:
      metrics = {'accuracy': np.nan, 'auc': np.nan}
      if hospital not in down:
        try:
          metrics = self._watched([hospital], 'evaluation', self._evaluate_on, weights,
                                  hospital)
        except NodeUnreachable:
          if not self.inner.task.config.min_clients:
            raise
      per_hospital[hospital] = {'accuracy': float(metrics['accuracy']),
                                'auc': float(metrics['auc']),
                                'num_test': data.num_test(hospital)}
    sizes = np.array([m['num_test'] for m in per_hospital.values()], float)
    accuracy = np.array([m['accuracy'] for m in per_hospital.values()])
    return {'per_hospital': per_hospital, 'mean_hospital': mean_over_hospitals(per_hospital),
            'pooled': {'accuracy': float(accuracy @ sizes / sizes.sum()),
                       'auc': float('nan')}}

  def _evaluate_on(self, weights, hospital: str):
    with tff.framework.get_context_stack().install(self._node_contexts[hospital]):
      return self._evaluate(weights, hospital)

  def _reconnect(self, hospital: str, reopen: bool = True) -> None:
    """(Re)builds `hospital`'s TFF contexts, on a new channel if `reopen`."""
    connection = self._connections[hospital]
    if reopen:
      connection.reopen()
    self._contexts[hospital] = hospital_context(connection.counted)
    self._node_contexts[hospital] = node_context(connection.counted)

  def _run_in_cohort(self, state, round_: Round):
    # The context stack is per thread: install the cohort's context in this one.
    with tff.framework.get_context_stack().install(
        cohort_context(self._contexts, round_.reporting, self._coordinator)):
      return self.inner.run_round(state, round_)

  def _watched(self, hospitals: Sequence[str], what: str, fn, *args):
    """fn(*args), in a thread while this one watches `hospitals`' nodes: TFF's
    remote contexts retry a call to a node that went away for ever, so one
    that stays unreachable for _PROBE_SECONDS has its channel closed, which
    ends the call, and NodeUnreachable names it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      future = pool.submit(fn, *args)
      while True:
        try:
          return future.result(timeout=_PROBE_SECONDS)
        except concurrent.futures.TimeoutError:
          down = _probe({h: self._connections[h].channel for h in hospitals}, hospitals)
          if down:
            for hospital in down:
              self._connections[hospital].channel.close()
            concurrent.futures.wait([future])
            for hospital in down:  # Fresh channels: the node may come back.
              self._reconnect(hospital)
            raise NodeUnreachable(f'{what}: hospital {", ".join(sorted(down))}\'s node '
                                  'stopped answering') from future.exception()
