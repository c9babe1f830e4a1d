"""experiments.scale_out: hospitals split over two local TFF workers train the
in-process model (none lost or counted twice), and no worker is left."""

import os
import subprocess

import numpy as np
import tensorflow as tf

from experiments import scale_out
from tff_med import runtime


def _live_worker_children() -> list[int]:
  """worker_binary children of this process that have not exited (a stopped
  one may stay an unreaped zombie)."""
  found = subprocess.run(['pgrep', '-P', str(os.getpid()), 'worker_binary'],
                         capture_output=True, text=True).stdout.split()
  live = []
  for pid in found:
    try:
      with open(f'/proc/{pid}/stat') as f:
        if f.read().rsplit(')', 1)[1].split()[0] != 'Z':
          live.append(int(pid))
    except FileNotFoundError:
      pass
  return live


def test_worker_shares_are_tffs_contiguous_split():
  assert scale_out.worker_shares('abcdefg', 2) == [tuple('abcd'), tuple('efg')]
  assert scale_out.worker_shares('abcdefg', 3) == [tuple('abc'), tuple('de'), tuple('fg')]
  assert scale_out.worker_shares('ab', 3) == [('a',), ('b',)]


def test_two_workers_train_the_in_process_model_and_leave_no_worker():
  # The in-process shuffles depend on TF's global seed where one was set in this
  # process; the workers' graphs never see it.
  tf.random.set_seed(None)
  data = scale_out.synthetic_data(7)  # Shares of 4 and 3 hospitals.
  expected = scale_out.run_cell(data, 0, rounds=2)
  got = scale_out.run_cell(data, 2, rounds=2)
  assert len(got.round_seconds) == len(got.workers_cpu_seconds) == 2
  assert got.workers_peak_rss_mib > 0  # Both nodes' workers were measured.
  for e, g in zip(expected.weights, got.weights):
    np.testing.assert_allclose(g, e, atol=1e-5)
  assert not runtime.running_workers()
  assert not _live_worker_children()
