"""TFF execution context set-up, and ownership of TFF's `worker_binary` process.

TFF's local C++ context starts a `worker_binary` child process and stops it only
in `ServiceManager.__del__`, which often never runs: the child then outlives
Python and keeps stdout open, and a pipe or CI job hangs. TFF offers no hook to
own that process, so this module (hand-written, for that reason) records every
worker TFF starts and stops them all at interpreter exit, on SIGTERM, and when a
`execution_context(...)` block ends, normally or by an exception.

    with runtime.execution_context(secure_sums=False):
      ...  # run TFF computations
"""

import atexit
import contextlib
import gc
import os
import signal
import subprocess
import threading
import time
import types

import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.executor_stacks import executor_factory as _tff_executor_factory

_WORKERS: list[subprocess.Popen] = []
_LOCK = threading.Lock()
_STOP_GRACE_SECONDS = 10.0


class _TrackedPopen(subprocess.Popen):
  """`subprocess.Popen` that records the process so this module can stop it."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    with _LOCK:
      _WORKERS.append(self)


# TFF's executor factory starts the worker with `subprocess.Popen`; give that
# module a view of `subprocess` whose Popen records the process. TFF's own
# `isinstance(process, subprocess.Popen)` check in `__del__` still holds.
_tff_executor_factory.subprocess = types.SimpleNamespace(
    **{**vars(subprocess), 'Popen': _TrackedPopen})


def _exited(pid: int) -> bool:
  """True once `pid` has exited. Leaves it unreaped (a zombie) so that TFF's own
  later `os.kill(pid, SIGINT)` + `wait()` still find it and cannot hit a reused pid."""
  try:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except ChildProcessError:  # Already reaped by TFF.
    return True


def running_workers() -> list[int]:
  """Pids of worker_binary processes started here that have not exited."""
  with _LOCK:
    return [p.pid for p in _WORKERS if not _exited(p.pid)]


def stop_workers() -> None:
  """Stops every worker_binary started here: SIGINT (as TFF does), SIGKILL after 10 s."""
  with _LOCK:
    workers = list(_WORKERS)
  for process in workers:
    if _exited(process.pid):
      continue
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    while not _exited(process.pid):
      if time.monotonic() > deadline:
        process.kill()
        deadline = float('inf')
      time.sleep(0.01)


class _ShutDownContext(tff.framework.SyncContext):
  """Default context after interpreter exit began: no computation may start."""

  def invoke(self, comp, arg):
    raise RuntimeError('the TFF runtime was shut down at interpreter exit')


def _shutdown() -> None:
  """At exit: stop workers, then release TFF's contexts while modules still exist,
  so TFF's `ServiceManager.__del__` runs now instead of failing during teardown."""
  stop_workers()
  tff.framework.set_default_context(_ShutDownContext())
  gc.collect()


def _on_sigterm(signum, frame):
  del frame
  stop_workers()
  raise SystemExit(128 + signum)


atexit.register(_shutdown)


def set_context(secure_sums: bool = False, max_concurrent_computation_calls: int = -1) -> None:
  """Installs TFF's local C++ execution context as the default context.

  Args:
    secure_sums: use TFF's test context, the only one that runs
      `federated_secure_sum*` (it lowers secure sums to plain sums).
    max_concurrent_computation_calls: cap on concurrent calls of one computation
      in the C++ runtime (bounds memory); non-positive means no cap.
  """
  if secure_sums:
    tff.backends.test.set_sync_test_cpp_execution_context(
        max_concurrent_computation_calls=max_concurrent_computation_calls)
  else:
    tff.backends.native.set_sync_local_cpp_execution_context(
        max_concurrent_computation_calls=max_concurrent_computation_calls)
  if (threading.current_thread() is threading.main_thread()
      and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
    signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def execution_context(secure_sums: bool = False, max_concurrent_computation_calls: int = -1):
  """`set_context(...)` for the block; its workers are stopped when it ends."""
  set_context(secure_sums, max_concurrent_computation_calls)
  try:
    yield
  finally:
    stop_workers()
