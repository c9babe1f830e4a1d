"""No TFF worker_binary outlives the program that started it."""

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
    if sys.argv[1] == 'sigterm':
      time.sleep(120)
''')


def _alive(pid: int) -> bool:
  """True if `pid` runs (a zombie or a missing process counts as gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _start(mode: str) -> tuple[subprocess.Popen, list[int]]:
  process = subprocess.Popen([sys.executable, '-c', _SCRIPT, mode], stdout=subprocess.PIPE,
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
