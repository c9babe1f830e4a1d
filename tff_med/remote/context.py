"""The coordinator's TFF execution context over hospital nodes.

Per hospital, TFF's own remote stack (what `tff.backends.native`'s local
context builds around its worker): a `RemoteExecutor` over a gRPC channel, here
through a mutual-TLS tunnel to the node (`tls_terminator.Stunnel` in client
mode), or plain for tests on one
machine. TFF's `MergeableCompExecutionContext` runs a
round's computation across the cohort's contexts, one hospital per context, in
cohort order; so each round gets the context of its own reporting hospitals
(`cohort_context`), and a hospital's handle only ever reaches its own node.
"""

from collections.abc import Mapping, Sequence

import grpc
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub

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


class Connection:
  """A connected gRPC channel to one hospital's node (`channel`), and the
  tunnel it runs in (None for --insecure_localhost)."""

  def __init__(self, grpc_channel: grpc.Channel, tunnel: Stunnel | None):
    self.channel, self.tunnel = grpc_channel, tunnel

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
  result = Connection(grpc.insecure_channel(target, _OPTIONS), tunnel)
  try:
    grpc.channel_ready_future(result.channel).result(timeout=_CONNECT_SECONDS)
  except grpc.FutureTimeoutError:
    result.close()
    raise NodeUnreachable(
        f'hospital {hospital} at {address}: no {"mutual TLS " if tls else ""}connection in '
        f'{_CONNECT_SECONDS:.0f} s (node down, wrong port, or a certificate refused)'
    ) from None
  return result


def hospital_context(grpc_channel: grpc.Channel) -> async_execution_context.AsyncExecutionContext:
  """TFF's remote execution context over one node's channel (one client)."""
  stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(grpc_channel)

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:  # Server-only computations.
      cardinalities[tff.CLIENTS] = 1
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return async_execution_context.AsyncExecutionContext(
      executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(
          executor_stack_fn=stack_fn),
      compiler_fn=compiler.desugar_and_transform_to_native,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result)


def cohort_context(contexts: Mapping[str, async_execution_context.AsyncExecutionContext],
                   cohort: Sequence[str]) -> tff.framework.MergeableCompExecutionContext:
  """TFF's mergeable context over the cohort's hospitals, in cohort order: the
  i-th CLIENTS value of a call runs on the i-th hospital's node."""
  return tff.backends.native.create_mergeable_comp_execution_context(
      [contexts[h] for h in cohort])
