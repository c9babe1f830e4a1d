"""TFF execution context set-up, and ownership of TFF's `worker_binary` process.

TFF's local C++ context starts a `worker_binary` child process and stops it only
in `ServiceManager.__del__`, which often never runs: the child then outlives
Python and keeps stdout open, and a pipe or CI job hangs. TFF offers no hook to
own that process, so this module (hand-written, for that reason) puts its own
`Popen` into TFF's executor factory, explicitly, when `set_context(...)` or
`execution_context(...)` is entered; importing this module changes nothing in
TFF. That `Popen` records every worker TFF starts, so that they are all stopped
at interpreter exit, on SIGTERM, and when an `execution_context(...)` block
ends, normally or by an exception (a block nested in one with the same
arguments shares its context and leaves the workers to it); on Linux it also
asks the kernel to SIGKILL the worker if its owner dies without running any of
that (`kill -9`), and it turns a worker that dies at start into an error
instead of TFF's endless wait.

    with runtime.execution_context(secure_sums=False):
      ...  # run TFF computations

When the outermost `execution_context` block ends, TFF's own `subprocess` module
is put back, unless `set_context(...)` was called outside any block: that
context has no end, so its workers stay owned until the interpreter exits.
"""

import atexit
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.executor_stacks import executor_factory as _tff_executor_factory

_WORKERS: list[subprocess.Popen] = []
_LOCK = threading.Lock()  # Guards _WORKERS.
_STOP_GRACE_SECONDS = 10.0

_START_SECONDS = 60.0  # A started worker must serve its port within this.

# Installation state: what TFF's executor factory had as `subprocess` before we
# replaced it (None while not installed), the open `execution_context` blocks'
# arguments (innermost last), and whether a bare `set_context()` asked for
# ownership until exit.
# Never held while TFF swaps contexts: that may join a context's event-loop
# thread, which could itself be waiting for a lock here.
_STATE_LOCK = threading.Lock()
_saved_subprocess = None
_blocks: list[tuple[bool, int]] = []
_owned_until_exit = False


def _setpriv() -> str | None:
  """util-linux's `setpriv` on Linux (None elsewhere, or if missing)."""
  return shutil.which('setpriv') if sys.platform.startswith('linux') else None


class _DiesWithParentPopen(subprocess.Popen):
  """`subprocess.Popen` that on Linux has the kernel SIGKILL the process when
  the spawning thread exits, by starting it through util-linux's
  `setpriv --pdeathsig KILL --` (which sets PR_SET_PDEATHSIG and execs it; the
  pid stays the same).

  Not a `preexec_fn`: that runs Python between fork and exec, which in a
  threaded process (TFF's event loops, gRPC) can abort the child or deadlock.

  PR_SET_PDEATHSIG fires when the *thread* that forked the child exits. TFF
  forks its worker in `ServiceManager.get_stub`, on the event-loop thread of
  the `SyncExecutionContext`'s `AsyncThreadRunner`: one long-lived thread per
  context, which ends only when that context is garbage-collected (which also
  drops the `ServiceManager` using the worker), so the signal cannot cut off a
  worker in use; on `kill -9` every thread ends and the worker goes too. If the
  owner is killed between fork and `setpriv`'s prctl, no signal comes: the
  atexit/SIGTERM stops below do not run either, so that window is not covered.
  """

  def __init__(self, args, *rest, **kwargs):
    setpriv = _setpriv()
    if setpriv:
      args = [setpriv, '--pdeathsig', 'KILL', '--', *args]
    super().__init__(args, *rest, **kwargs)


def wait_for_port(port: int, process: subprocess.Popen, what: str,
                  seconds: float = _START_SECONDS) -> None:
  """Returns once 127.0.0.1:`port` accepts connections; RuntimeError naming
  `what` if `process` exits first or `seconds` pass. Leaves an exited process
  unreaped (`_exited`)."""
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if _exited(process):
      raise RuntimeError(f'{what} exited before serving port {port}')
    with socket.socket() as s:
      if s.connect_ex(('127.0.0.1', port)) == 0:
        return
    time.sleep(0.05)
  raise RuntimeError(f'{what} did not open port {port} within {seconds:.0f} s')


class _TrackedPopen(_DiesWithParentPopen):
  """`_DiesWithParentPopen` for TFF's `worker_binary`: records the process so
  this module can stop it, and returns only once it serves its `--port`.

  TFF's `ServiceManager.get_stub` waits for a new worker with no deadline, so a
  worker that died at start would hang the caller for ever; here it raises
  instead (the worker is stopped and reaped: TFF never sees it)."""

  def __init__(self, args, *rest, **kwargs):
    super().__init__(args, *rest, **kwargs)
    with _LOCK:
      _WORKERS.append(self)
    ports = [a.split('=', 1)[1] for a in args if str(a).startswith('--port=')]
    if ports:
      try:
        wait_for_port(int(ports[0]), self, 'TFF worker_binary')
      except RuntimeError:
        stop_processes([self])
        self.wait()
        raise


# What TFF's executor factory sees as `subprocess` while installed: the real
# module's names, with Popen replaced. TFF's own
# `isinstance(process, subprocess.Popen)` check in `__del__` still holds.
_TRACKING_SUBPROCESS = types.SimpleNamespace(**{**vars(subprocess), 'Popen': _TrackedPopen})


def _install_locked() -> None:
  """Puts the recording Popen into TFF's executor factory (idempotent).
  The caller holds _STATE_LOCK."""
  global _saved_subprocess
  if _saved_subprocess is None:
    _saved_subprocess = _tff_executor_factory.subprocess
    _tff_executor_factory.subprocess = _TRACKING_SUBPROCESS


def _uninstall_locked() -> None:
  """Gives TFF's executor factory back the `subprocess` it had (idempotent).
  The caller holds _STATE_LOCK."""
  global _saved_subprocess
  if _saved_subprocess is not None:
    _tff_executor_factory.subprocess = _saved_subprocess
    _saved_subprocess = None


def _exited(process: subprocess.Popen) -> bool:
  """True once `process` has exited. Leaves it unreaped (a zombie) so that TFF's
  own later `os.kill(pid, SIGINT)` + `wait()` still find it and cannot hit a
  reused pid. A process TFF reaped (`returncode` set) has exited, whatever now
  runs under its old pid."""
  if process.returncode is not None:
    return True
  try:
    return os.waitid(os.P_PID, process.pid,
                     os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except ChildProcessError:  # Already reaped (outside Popen).
    return True


def _forget_reaped() -> None:
  """Drops the workers TFF has reaped: their pids may already belong to new
  processes. The caller holds _LOCK."""
  _WORKERS[:] = [p for p in _WORKERS if p.returncode is None]


def running_workers() -> list[int]:
  """Pids of worker_binary processes started here that have not exited."""
  with _LOCK:
    _forget_reaped()
    return [p.pid for p in _WORKERS if not _exited(p)]


def stop_processes(processes) -> None:
  """Stops each process: SIGTERM, SIGKILL after 10 s. (Not SIGINT, which TFF
  sends: a process started while SIGINT was ignored, under `nohup` or `cmd &`,
  inherits that and would wait out the grace period.)"""
  for process in processes:
    if _exited(process):
      continue
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    while not _exited(process):
      if time.monotonic() > deadline:
        process.kill()
        deadline = float('inf')
      time.sleep(0.01)


def stop_workers() -> None:
  """Stops every worker_binary TFF started here (`stop_processes`)."""
  with _LOCK:
    _forget_reaped()
    workers = list(_WORKERS)
  stop_processes(workers)


_OWNED: list[subprocess.Popen] = []  # start_owned's processes; guarded by _LOCK.


def start_owned(args, **popen_kwargs) -> subprocess.Popen:
  """Starts a process this module owns as it owns TFF's workers: on Linux the
  kernel kills it when the starting thread's process dies, and it is stopped at
  interpreter exit and on SIGTERM (not when an `execution_context` block ends).
  For a node's worker and TLS terminator."""
  process = _DiesWithParentPopen(args, **popen_kwargs)
  with _LOCK:
    _OWNED.append(process)
  _stop_on_sigterm()
  return process


def stop_owned(processes) -> None:
  """Stops `start_owned` processes (`stop_processes`), reaps them and forgets
  them (they are ours, not TFF's: no one else waits for them)."""
  stop_processes(processes)
  for process in processes:
    process.wait()
  with _LOCK:
    _OWNED[:] = [p for p in _OWNED if p not in processes]


def _stop_owned() -> None:
  with _LOCK:
    owned = list(_OWNED)
  stop_processes(owned)


class _ShutDownContext(tff.framework.SyncContext):
  """Default context after interpreter exit began: no computation may start."""

  def invoke(self, comp, arg):
    raise RuntimeError('the TFF runtime was shut down at interpreter exit')


def _shutdown() -> None:
  """At exit: stop workers, then release TFF's contexts while modules still exist,
  so TFF's `ServiceManager.__del__` runs now instead of failing during teardown."""
  stop_workers()
  _stop_owned()
  tff.framework.set_default_context(_ShutDownContext())
  gc.collect()
  with _STATE_LOCK:
    _uninstall_locked()


def _on_sigterm(signum, frame):
  del frame
  stop_workers()
  _stop_owned()
  raise SystemExit(128 + signum)


def _stop_on_sigterm() -> None:
  """Installs `_on_sigterm` where SIGTERM still has its default action."""
  if (threading.current_thread() is threading.main_thread()
      and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
    signal.signal(signal.SIGTERM, _on_sigterm)


atexit.register(_shutdown)


def _set_context(secure_sums: bool, max_concurrent_computation_calls: int) -> None:
  if secure_sums:
    tff.backends.test.set_sync_test_cpp_execution_context(
        max_concurrent_computation_calls=max_concurrent_computation_calls)
  else:
    tff.backends.native.set_sync_local_cpp_execution_context(
        max_concurrent_computation_calls=max_concurrent_computation_calls)
  _stop_on_sigterm()


def set_context(secure_sums: bool = False, max_concurrent_computation_calls: int = -1) -> None:
  """Installs TFF's local C++ execution context as the default context.

  Its workers are owned by this module until the interpreter exits.

  Args:
    secure_sums: use TFF's test context, the only one that runs
      `federated_secure_sum*` (it lowers secure sums to plain sums).
    max_concurrent_computation_calls: cap on concurrent calls of one computation
      in the C++ runtime (bounds memory); non-positive means no cap.
  """
  global _owned_until_exit
  with _STATE_LOCK:
    _owned_until_exit = True
    _install_locked()
  _set_context(secure_sums, max_concurrent_computation_calls)


@contextlib.contextmanager
def execution_context(secure_sums: bool = False, max_concurrent_computation_calls: int = -1):
  """`set_context(...)` for the block; its workers are stopped when it ends, and
  TFF's own `subprocess` is put back when the outermost block ends.

  A block directly inside one with the same arguments runs in that block's
  context: its worker, and what the worker has compiled, serve both (a grid's
  runs share one). A block with other arguments stops the enclosing block's
  workers, sets its own context and, when it ends, stops every worker and sets
  the enclosing block's context again (a fresh worker starts at its next call).
  """
  key = (secure_sums, max_concurrent_computation_calls)
  with _STATE_LOCK:
    nested = bool(_blocks)
    reuse = nested and _blocks[-1] == key
    _blocks.append(key)
    _install_locked()
  try:
    if not reuse:
      if nested:  # TFF drops the enclosing context; its own stop of that context's
        stop_workers()  # worker (SIGINT, then wait) never returns where SIGINT is ignored.
      _set_context(*key)
    yield
  finally:
    if not reuse:
      stop_workers()
    with _STATE_LOCK:
      _blocks.pop()
      outer = _blocks[-1] if _blocks else None
      if not _blocks and not _owned_until_exit:
        _uninstall_locked()
    if outer is not None and not reuse:
      _set_context(*outer)
