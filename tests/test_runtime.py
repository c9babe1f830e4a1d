"""No TFF worker_binary outlives the program that started it."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tff_med import runtime

_SCRIPT = textwrap.dedent('''
    import os, sys, time
    import numpy as np
    import tensorflow_federated as tff
    from tff_med import runtime

    runtime.set_context()

    @tff.tensorflow.computation(np.float32)
    def add_one(x):
      return x + 1

    assert add_one(1.0) == 2.0
    print('workers', *runtime.running_workers(), flush=True)
    if sys.argv[1] == 'exception':
      raise RuntimeError('failure in the middle of a run')
    if sys.argv[1] in ('sigterm', 'sigkill'):
      time.sleep(120)
''')


def _alive(pid: int) -> bool:
  """True if `pid` runs (a zombie or a missing process counts as gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _start(mode: str, script: str = _SCRIPT) -> tuple[subprocess.Popen, list[int]]:
  process = subprocess.Popen([sys.executable, '-c', script, mode], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  for line in process.stdout:
    if line.startswith('workers'):
      return process, [int(p) for p in line.split()[1:]]
  process.wait()
  raise AssertionError(f'script never ran a computation: {process.stderr.read()}')


def _assert_gone(pids: list[int]) -> None:
  deadline = time.monotonic() + 10
  while any(_alive(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not any(_alive(p) for p in pids), f'worker_binary left running: {pids}'


@pytest.mark.parametrize('mode,returncode', [('normal', 0), ('exception', 1),
                                             ('sigterm', 128 + signal.SIGTERM)])
def test_no_worker_left_after_exit(mode, returncode):
  process, pids = _start(mode)
  assert pids
  if mode == 'sigterm':
    assert all(_alive(p) for p in pids)
    process.send_signal(signal.SIGTERM)
  # communicate() returns only when every holder of the pipes, the worker
  # included, has closed them: a leaked worker would hang here.
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == returncode, stderr
  if mode == 'exception':
    assert 'failure in the middle of a run' in stderr
  _assert_gone(pids)


def test_execution_context_block_stops_its_worker_even_on_error():
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  @tff.tensorflow.computation(np.int32)
  def double(x):
    return x * 2

  with pytest.raises(ValueError, match='stop'):
    with runtime.execution_context():
      assert double(3) == 6
      pids = runtime.running_workers()
      assert pids
      raise ValueError('stop')
  _assert_gone(pids)
  assert not runtime.running_workers()
  with runtime.execution_context():  # A later block starts a fresh worker.
    assert double(4) == 8


def _double():
  """A TFF computation x -> 2x (TFF is imported inside the tests only)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  @tff.tensorflow.computation(np.int32)
  def double(x):
    return x * 2
  return double


@contextlib.contextmanager
def _sigint_ignored():
  """SIGINT ignored, as under pytest-xdist, `nohup` or `cmd &` (workers inherit it)."""
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def test_a_nested_block_with_the_same_arguments_shares_the_worker_and_another_restores_it():
  double = _double()
  # TFF's own stop of a dropped context's worker (SIGINT, then wait) would hang here.
  with _sigint_ignored(), runtime.execution_context():
    assert double(1) == 2
    outer = runtime.running_workers()
    assert len(outer) == 1
    with runtime.execution_context():  # Same arguments: the same worker, running after.
      assert double(2) == 4
      assert runtime.running_workers() == outer
    assert runtime.running_workers() == outer
    with runtime.execution_context(max_concurrent_computation_calls=2):  # Its own.
      _assert_gone(outer)
      assert double(3) == 6
      inner = runtime.running_workers()
      assert inner and not set(inner) & set(outer)
    _assert_gone(inner)
    assert double(4) == 8  # The outer block's context again, on a fresh worker.
    last = runtime.running_workers()
    assert last and not set(last) & set(outer + inner)
  _assert_gone(last)
  assert not runtime.running_workers()


def test_a_worker_started_with_sigint_ignored_stops_on_the_first_signal():
  """Under `nohup` or `cmd &` SIGINT is ignored and the worker inherits that:
  stopping it with SIGINT (as TFF does) waited out the grace period, then
  SIGKILL. It must end by the SIGTERM sent first."""
  double = _double()
  with _sigint_ignored():
    with runtime.execution_context():
      assert double(3) == 6
      workers = list(runtime._WORKERS)  # pylint: disable=protected-access
  assert workers
  for worker in workers:
    try:  # Read without reaping: the module leaves that to TFF's own wait().
      ended = os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
      assert (ended.si_code, ended.si_status) == (os.CLD_KILLED, signal.SIGTERM)
    except ChildProcessError:  # TFF's wait() (its ServiceManager's __del__) reaped it.
      assert worker.returncode == -signal.SIGTERM


def test_worker_dies_with_its_owner_on_sigkill():
  # SIGKILL runs no handler, atexit or finalizer: only the kernel's parent-death
  # signal, set when the worker was started, can stop it.
  process, pids = _start('sigkill')
  try:
    assert pids
    assert all(_alive(p) for p in pids)
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    _assert_gone(pids)
  finally:
    for pid in pids:  # Leak no worker if the assertion above failed.
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    process.stdout.close()
    process.stderr.close()


_INSTALL_SCRIPT = textwrap.dedent('''
    import subprocess, threading, time
    import numpy as np
    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory
    from tff_med import runtime

    assert executor_factory.subprocess is subprocess, 'import changed TFF'

    @tff.tensorflow.computation(np.float32)
    def add_one(x):
      return x + 1

    with runtime.execution_context():
      installed = executor_factory.subprocess
      assert installed is not subprocess
      assert issubclass(installed.Popen, subprocess.Popen)
      # The worker dies with the thread that started it (PR_SET_PDEATHSIG). TFF
      # starts it on its context's own event-loop thread, not on the caller's:
      # a first call from a thread that then ends must not take the worker along.
      context = tff.framework.get_context_stack().current
      started = []

      def first_call():
        with tff.framework.get_context_stack().install(context):
          assert add_one(1.0) == 2.0
        started.extend(runtime.running_workers())

      thread = threading.Thread(target=first_call)
      thread.start()
      thread.join()
      time.sleep(1)
      assert len(started) == 1, started
      assert runtime.running_workers() == started, (started, runtime.running_workers())
      assert add_one(2.0) == 3.0
      assert runtime.running_workers() == started, (started, runtime.running_workers())
      print('workers', *started, flush=True)
      with runtime.execution_context():  # Nested: the inner exit keeps it.
        assert executor_factory.subprocess is installed
        assert add_one(3.0) == 4.0
      assert executor_factory.subprocess is installed
    assert executor_factory.subprocess is subprocess, 'not restored'
    assert not runtime.running_workers()
    runtime.set_context()  # No block to end: owned until exit.
    assert executor_factory.subprocess is installed
''')


def test_import_leaves_tff_untouched_and_a_block_installs_and_restores():
  process, pids = _start('install', _INSTALL_SCRIPT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  _assert_gone(pids)


def test_a_reaped_workers_reused_pid_is_neither_waited_for_nor_signalled(monkeypatch):
  """A worker TFF reaped long ago keeps its Popen in the record; once its pid
  belongs to a new process, stop_workers must not wait on (or signal) that
  process. It did, and a full test run hung once pids wrapped around."""
  stale = subprocess.Popen(['true'])
  stale.wait()  # Reaped, as TFF's ServiceManager reaps its workers.
  newcomer = subprocess.Popen(['sleep', '30'])
  try:
    stale.pid = newcomer.pid  # The pid, reused.
    monkeypatch.setattr(runtime, '_WORKERS', [stale])
    start = time.monotonic()
    assert runtime.running_workers() == []
    runtime.stop_workers()
    assert time.monotonic() - start < 5
    assert newcomer.poll() is None  # Not the stale record's to stop.
  finally:
    newcomer.kill()
    newcomer.wait()


def test_a_worker_that_dies_at_start_is_an_error_not_a_hang():
  # TFF's ServiceManager.get_stub polls a new worker's stub with no deadline;
  # the tracked Popen must raise first. `sh -c 'exit 3' --port=N` stands in for
  # a worker_binary that exits before serving its port.
  started = time.monotonic()
  with pytest.raises(RuntimeError, match='TFF worker_binary exited before serving port 1'):
    runtime._TrackedPopen(['sh', '-c', 'exit 3', '--port=1'])
  assert time.monotonic() - started < 10
  assert not runtime.running_workers()


def test_owned_processes_start_through_setpriv_with_the_parent_death_signal():
  # No Python runs between fork and exec (a preexec_fn there can abort a
  # threaded parent's child): the kill on parent death is setpriv's prctl.
  process = runtime.start_owned(['sleep', '30'])
  try:
    assert process.args[:4] == ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--'], process.args
    with open(f'/proc/{process.pid}/cmdline', 'rb') as f:
      deadline = time.monotonic() + 10
      while f.read().split(b'\0')[0] != b'sleep' and time.monotonic() < deadline:
        f.seek(0)
        time.sleep(0.01)
    with open(f'/proc/{process.pid}/cmdline', 'rb') as f:
      assert f.read().split(b'\0')[0] == b'sleep'  # Same pid, exec'd.
  finally:
    runtime.stop_processes([process])
    process.wait()
