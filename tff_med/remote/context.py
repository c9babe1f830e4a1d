"""The coordinator's TFF execution context over hospital nodes.

Per hospital, TFF's own remote stack (what `tff.backends.native`'s local
context builds around its worker): a `RemoteExecutor` over a gRPC channel, here
through a mutual-TLS tunnel to the node (`tls_terminator.Stunnel` in client
mode), or plain for tests on one machine. A round's computation runs across
the cohort's contexts, one hospital per context, in cohort order, with the
merging on the coordinator (`CohortContext`); so each round gets the context of
its own reporting hospitals, and a hospital's handle only ever reaches its own
node.
"""

import asyncio
import threading
from collections.abc import Mapping, Sequence

import grpc
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import type_analysis
from tensorflow_federated.python.core.impl.types import type_conversions

from tff_med.remote.certs import TlsFiles
from tff_med.remote.tls_terminator import Stunnel

_CONNECT_SECONDS = 30.0
# TFF's own channel options (executor_factory._GRPC_CHANNEL_OPTIONS): 2 GB messages.
_MAX_BYTES = 2 * 1000 * 1000 * 1000
_OPTIONS = [('grpc.max_message_length', _MAX_BYTES),
            ('grpc.max_receive_message_length', _MAX_BYTES),
            ('grpc.max_send_message_length', _MAX_BYTES)]


class NodeUnreachable(ConnectionError):
  """A hospital's node did not accept the coordinator's connection."""


class _Traffic(grpc.UnaryUnaryClientInterceptor):
  """Counts the serialised bytes of TFF's executor calls (all unary) through
  one channel: `sent` requests, `received` responses."""

  def __init__(self):
    self.sent = self.received = 0
    self._lock = threading.Lock()

  def intercept_unary_unary(self, continuation, client_call_details, request):
    with self._lock:
      self.sent += request.ByteSize()
    call = continuation(client_call_details, request)
    try:
      size = call.result().ByteSize()
    except grpc.RpcError:
      return call
    with self._lock:
      self.received += size
    return call


class Connection:
  """A connected gRPC channel to one hospital's node (`channel`), the same
  channel counting its traffic (`counted`, for TFF's stubs), and the tunnel it
  runs in (None for --insecure_localhost)."""

  def __init__(self, target: str, tunnel: Stunnel | None):
    self._target, self.tunnel = target, tunnel
    self._traffic = _Traffic()
    self.reopen()

  def reopen(self) -> None:
    """A new channel to the same node (the tunnel stays): after `channel.close()`
    ended a call to a node that went away, so that it can rejoin."""
    self.channel = grpc.insecure_channel(self._target, _OPTIONS)
    self.counted = grpc.intercept_channel(self.channel, self._traffic)

  def traffic(self) -> tuple[int, int]:
    """(bytes sent to the node, bytes received from it) so far."""
    return self._traffic.sent, self._traffic.received

  def close(self) -> None:
    self.channel.close()
    if self.tunnel:
      self.tunnel.close()


def connect(hospital: str, address: str, tls: TlsFiles | None) -> Connection:
  """A connection to `hospital`'s node at 'HOST:PORT': with `tls`, through a
  mutual-TLS tunnel; without, plain gRPC (tests on one machine only).
  NodeUnreachable naming the hospital when no connection is made in 30 s
  (node down, wrong port, or a certificate refused by either end)."""
  target = f'127.0.0.1:{portpicker.pick_unused_port()}' if tls else address
  # The coordinator's end: the node must hold the certificate issued to `hospital`.
  tunnel = (Stunnel(hospital, target, address, tls, hospital, client=True) if tls
            else None)
  result = Connection(target, tunnel)
  try:
    grpc.channel_ready_future(result.channel).result(timeout=_CONNECT_SECONDS)
  except grpc.FutureTimeoutError:
    result.close()
    raise NodeUnreachable(
        f'hospital {hospital} at {address}: no {"mutual TLS " if tls else ""}connection in '
        f'{_CONNECT_SECONDS:.0f} s (node down, wrong port, or a certificate refused)'
    ) from None
  return result


def _executor_factory(grpc_channel: grpc.Channel):
  """TFF's remote executor stack over one node's channel (one client)."""
  stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(grpc_channel)

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:  # Server-only computations.
      cardinalities[tff.CLIENTS] = 1
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn)


_CONTEXT_ARGS = dict(compiler_fn=compiler.desugar_and_transform_to_native,
                     transform_args=tensorflow_computation.transform_args,
                     transform_result=tensorflow_computation.transform_result)


def hospital_context(grpc_channel: grpc.Channel) -> async_execution_context.AsyncExecutionContext:
  """TFF's remote execution context over one node's channel, for `CohortContext`."""
  return async_execution_context.AsyncExecutionContext(
      executor_fn=_executor_factory(grpc_channel), **_CONTEXT_ARGS)


def node_context(grpc_channel: grpc.Channel) -> sync_execution_context.SyncExecutionContext:
  """The same, synchronous: a computation installed in it runs wholly on the node
  (the node's own work: its manifest, its test metrics)."""
  return sync_execution_context.SyncExecutionContext(
      executor_fn=_executor_factory(grpc_channel), **_CONTEXT_ARGS)


class CohortContext(mergeable_comp_execution_context.MergeableCompExecutionContext):
  """TFF's mergeable context over a cohort's nodes, in cohort order (the i-th
  CLIENTS value of a call goes to the i-th hospital's node), except where the
  merging runs.

  TFF's own context runs `merge` on whichever node finished first, handing it
  the partial aggregate of the others (for a pair: another hospital's update),
  and `after_merge`, the server's part (the DP aggregator's noise, the server
  optimiser), on a node too. Here each node runs only `up_to_merge` on its own
  part, and `merge` and `after_merge` run in `coordinator`, the coordinator's
  own context: what leaves a node goes to the coordinator alone. Written here
  because TFF 0.87 has no option for it; the rest is TFF's.
  """

  def __init__(self, nodes: Sequence[async_execution_context.AsyncExecutionContext],
               coordinator: async_execution_context.AsyncExecutionContext):
    super().__init__(nodes, mergeable_comp_compiler.compile_to_mergeable_comp_form)
    self._nodes, self._coordinator = nodes, coordinator

  def invoke(self, comp, arg=None):
    form = self._compiler_pipeline.compile(comp)
    result_type = form.after_merge.type_signature.result
    if not type_analysis.contains_only(
        result_type, lambda t: not isinstance(t, tff.FederatedType) or t.all_equal):
      raise ValueError(f'a computation returning {result_type} would run its last part on '
                       'the hospital nodes: not run')
    args = (mergeable_comp_execution_context.MergeableCompExecutionContextValue(
        arg, form.up_to_merge.type_signature.parameter, len(self._nodes)).value()
            if arg is not None else [None] * len(self._nodes))
    return type_conversions.type_to_py_container(
        self._async_runner.run_coro_and_return_result(self._invoke(form, args)), result_type)

  async def _invoke(self, form, args):
    partials = await asyncio.gather(*[node.invoke(form.up_to_merge, part)
                                      for node, part in zip(self._nodes, args)])
    merged = partials[0]
    for partial in partials[1:]:
      merged = await self._coordinator.invoke(form.merge,
                                              structure.Struct.unnamed(merged, partial))
    return await self._coordinator.invoke(
        form.after_merge,
        structure.Struct.unnamed(args[0], merged) if args[0] is not None else merged)


def coordinator_context(max_concurrent_computation_calls: int = -1
                        ) -> async_execution_context.AsyncExecutionContext:
  """TFF's local context, where the coordinator runs a cohort's merge and the
  server's part of each round (its worker: `tff_med.runtime`)."""
  return tff.backends.native.create_async_local_cpp_execution_context(
      max_concurrent_computation_calls=max_concurrent_computation_calls)


def cohort_context(contexts: Mapping[str, async_execution_context.AsyncExecutionContext],
                   cohort: Sequence[str],
                   coordinator: async_execution_context.AsyncExecutionContext) -> CohortContext:
  """`CohortContext` over the cohort's hospitals' contexts, merging in `coordinator`."""
  return CohortContext([contexts[h] for h in cohort], coordinator)
