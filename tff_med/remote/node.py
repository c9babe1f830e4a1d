"""One hospital's node: TFF's `worker_binary` running in the hospital's records
folder, behind `stunnel` for mutual TLS.

TFF 0.87's worker speaks insecure gRPC only (its `worker_main.cc` has a TODO for
secure servers) and listens on every interface, so the node puts stunnel
(Debian's stunnel4, a maintained TLS terminator) in front of it: stunnel
accepts TLS 1.2+ on `port`, requires a client certificate signed by the study
CA whose name is `coordinator`, and forwards to the worker. The worker's own
port must be closed to the network by the host's firewall (see the README).

The node owns both processes: they are stopped with the node (and killed by
the kernel if the node's process dies, `runtime.die_with_parent`).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import portpicker
import tensorflow_federated as tff

from tff_med import runtime
from tff_med.remote.certs import COORDINATOR, TlsFiles

WORKER_BINARY = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')
_START_SECONDS = 30.0


def stunnel_binary() -> str:
  """Path of stunnel; FileNotFoundError saying how to install it."""
  path = shutil.which('stunnel4') or shutil.which('stunnel')
  if not path:
    raise FileNotFoundError('stunnel is not installed: `make setup` installs Debian\'s '
                            'stunnel4 (apt-get install stunnel4)')
  return path


def _stunnel_config(tls: TlsFiles, accept: str, worker_port: int) -> str:
  return '\n'.join([
      'foreground = yes', 'syslog = no', 'debug = 3',
      '[tff_worker]',
      f'accept = {accept}',
      f'connect = 127.0.0.1:{worker_port}',
      f'cert = {os.path.abspath(tls.cert)}', f'key = {os.path.abspath(tls.key)}',
      f'CAfile = {os.path.abspath(tls.ca)}',
      'verifyChain = yes', 'requireCert = yes',
      f'checkHost = {COORDINATOR}',  # A hospital's certificate is no coordinator's.
      'sslVersionMin = TLSv1.2', ''])


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
  deadline = time.monotonic() + _START_SECONDS
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'{what} exited with status {process.returncode} before serving '
                         f'port {port}')
    with socket.socket() as s:
      if s.connect_ex(('127.0.0.1', port)) == 0:
        return
    time.sleep(0.05)
  raise RuntimeError(f'{what} did not open port {port} within {_START_SECONDS:.0f} s')


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
    self._processes: list[subprocess.Popen] = []
    self._config_dir = None

  def start(self) -> 'HospitalNode':
    worker_port = portpicker.pick_unused_port() if self.tls else self.port
    worker = runtime.start_owned(
        [WORKER_BINARY, f'--port={worker_port}',
         f'--max_concurrent_computation_calls={self._max_calls}'],
        cwd=self.records, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    self._processes.append(worker)
    wait_for_port(worker_port, worker, 'worker_binary')
    if self.tls:
      self._config_dir = tempfile.mkdtemp(prefix='tff_med_node_')
      config = os.path.join(self._config_dir, 'stunnel.conf')
      with open(config, 'w') as f:
        f.write(_stunnel_config(self.tls, f'{self.host}:{self.port}', worker_port))
      proxy = runtime.start_owned([stunnel_binary(), config], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
      self._processes.append(proxy)
      wait_for_port(self.port, proxy, 'stunnel')
    return self

  @property
  def pids(self) -> list[int]:
    return [p.pid for p in self._processes]

  def stop(self) -> None:
    runtime.stop_processes(self._processes)
    self._processes.clear()
    if self._config_dir:
      shutil.rmtree(self._config_dir, ignore_errors=True)
      self._config_dir = None

  def __enter__(self) -> 'HospitalNode':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
