"""One hospital's node: TFF's `worker_binary` running in the hospital's records
folder, behind `stunnel` for mutual TLS.

TFF 0.87's worker speaks insecure gRPC only (its `worker_main.cc` has a TODO for
secure servers) and listens on every interface, so the node puts stunnel
(Debian's stunnel4, a maintained TLS terminator) in front of it: stunnel
accepts TLS 1.2+ on `port`, requires a client certificate signed by the study
CA whose name is `coordinator`, and forwards to the worker. The worker's own
port must be closed to the network by the host's firewall (see the README).

The node owns both processes: they are stopped with the node (and killed by
the kernel if the node's process dies: `runtime.start_owned`).
"""

import os
import socket
import subprocess

import portpicker
import tensorflow_federated as tff

from tff_med import runtime
from tff_med.remote.certs import COORDINATOR, TlsFiles
from tff_med.remote.tls_terminator import Stunnel

WORKER_BINARY = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')


class HospitalNode:
  """Serves one hospital's records folder (`tff_med.remote.records`) on `port`:
  with `tls`, mutual TLS through stunnel on `host`:`port`; without, the worker
  itself on `port`, on every interface (insecure: for tests on one machine
  behind a closed firewall only)."""

  def __init__(self, records: str, port: int, tls: TlsFiles | None, host: str = '0.0.0.0',
               max_concurrent_computation_calls: int = -1):
    if not os.path.isdir(records):
      raise FileNotFoundError(f'{records}: no such records folder')
    self.records, self.port, self.tls, self.host = records, port, tls, host
    self._max_calls = max_concurrent_computation_calls
    self._worker: subprocess.Popen | None = None
    self._proxy: Stunnel | None = None

  def start(self) -> 'HospitalNode':
    """Starts the worker and its proxy; OSError if `port` is taken (else another
    process's open port would pass for this node's), RuntimeError if either
    process exits at start. Nothing is left running on an error."""
    with socket.socket() as probe:  # Bind-and-release: the port must be ours to take.
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As stunnel: TIME_WAIT is free.
      try:
        probe.bind((self.host, self.port))
      except OSError as e:
        raise OSError(f'port {self.port} on {self.host} is taken ({e.strerror})') from None
    worker_port = portpicker.pick_unused_port() if self.tls else self.port
    try:
      self._worker = runtime.start_owned(
          [WORKER_BINARY, f'--port={worker_port}',
           f'--max_concurrent_computation_calls={self._max_calls}'],
          cwd=self.records, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      runtime.wait_for_port(worker_port, self._worker, 'worker_binary')
      if self.tls:  # A hospital's certificate is no coordinator's: checkHost.
        self._proxy = Stunnel('tff_worker', f'{self.host}:{self.port}',
                              f'127.0.0.1:{worker_port}', self.tls, COORDINATOR, client=False)
    except BaseException:
      self.stop()
      raise
    return self

  def stop(self) -> None:
    if self._proxy:
      self._proxy.close()
      self._proxy = None
    if self._worker:
      runtime.stop_owned([self._worker])
      self._worker = None

  def __enter__(self) -> 'HospitalNode':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
