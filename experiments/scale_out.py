r"""Seconds per FedAvg round for many simulated hospitals: in process (TFF's
local C++ context fed tf.data datasets, as the simulation runs today) and over
TFF's remote runtime spread across K local `worker_binary` processes.

    python -m experiments.scale_out --sizes=100,1000 --workers=1,2 --cell_rounds=4

Each hospital holds 100 synthetic records of 20 features (seeded); the model is
an MLP 20 -> 64 -> 32 -> 1 logit; FedAvg with client SGD at 0.1, batch 32, one
local epoch, every hospital in every round. Over K workers, TFF's
`MergeableCompExecutionContext` gives each worker a contiguous share of
ceil(N/K) hospitals (`worker_shares`), whose records are written to that
worker's folder only, and sends each hospital's handle
(`tff_med.remote.records`); initialising and reading the weights stay in
process. Per cell: round 1 is the warm-up (tracing, compilation, the workers'
first calls), the medians are over the rounds after it: wall seconds, CPU
seconds of this (coordinator) process and of the workers; and peak RSS (MiB)
of each during the rounds. Writes --results_json (JSON, with each cell's time of day
and load averages) and the markdown table beside it (.md). Every worker is
stopped when its cell ends.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import contextlib  # pylint: disable=g-import-not-at-top
import dataclasses
import functools
import json
import math
import re
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import portpicker
import tensorflow as tf
import tensorflow_federated as tff

from tff_med import runtime
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms.learning import LearningPlan, plain_aggregation
from tff_med.mechanisms.round_plan import Round
from tff_med.mechanisms.task import Task
from tff_med.models import ModelConfig, build_keras_model
from tff_med.remote import context, records
from tff_med.remote.node import HospitalNode

# The binary prints its own table; TF's and absl's INFO lines drown it.
logging.set_verbosity(logging.WARNING)
tf.get_logger().setLevel('ERROR')

FEATURES, RECORDS, TEST_RECORDS = 20, 100, 20
CONFIG = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), batch_size=32, local_epochs=1,
                     seed=0)

_HOSPITALS = flags.DEFINE_list('sizes', ['100', '1000'], 'Numbers of simulated hospitals.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Numbers K of local worker_binary '
                             'processes for the remote runtime (the in-process row is always run).')
_ROUNDS = flags.DEFINE_integer('cell_rounds', 4, 'Rounds per cell: 1 warm-up, then timed ones.')
_CELL_SECONDS = flags.DEFINE_float('cell_seconds', 300.0, 'Budget per cell (s): no timed round '
                                   'starts that would, at the last round\'s pace, end past it '
                                   '(at least one timed round).')
_PASSES = flags.DEFINE_integer('passes', 1, 'Times the whole table is measured (a second pass '
                               'confirms the first on a noisy machine).')
_OUTPUT = flags.DEFINE_string('results_json', 'docs/results/scale_out.json', 'JSON results; the '
                              'markdown table goes beside it (.md).')


def synthetic_data(num_hospitals: int, seed: int = 0) -> FederatedData:
  """`num_hospitals` hospitals 'h0000', ...: RECORDS training and TEST_RECORDS
  test records each, FEATURES standard-normal features shifted per hospital,
  label 1 where a shared linear score plus noise is positive."""
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=FEATURES)
  arrays = {}
  for k in range(num_hospitals):
    x = (rng.normal(size=(RECORDS + TEST_RECORDS, FEATURES))
         + rng.normal(scale=0.5, size=FEATURES)).astype(np.float32)
    y = (x @ weights + rng.normal(size=len(x)) > 0).astype(np.int64)
    arrays[f'h{k:04d}'] = (x, y)
  return FederatedData.from_arrays(
      f'synthetic_{num_hospitals}', {h: (x[:RECORDS], y[:RECORDS]) for h, (x, y) in arrays.items()},
      {h: (x[RECORDS:], y[RECORDS:]) for h, (x, y) in arrays.items()})


def fedavg_plan(data: FederatedData) -> LearningPlan:
  """Weighted FedAvg (client SGD at 0.1) of the MLP 20 -> 64 -> 32 -> 1."""
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('mlp', (64, 32)),
                                     data.feature_shape, 0)
  return plain_aggregation(Task(data, keras_model_fn, CONFIG))


def worker_shares(hospitals, workers: int) -> list[tuple[str, ...]]:
  """The hospitals each of `workers` contexts gets from TFF's
  `MergeableCompExecutionContext` (its `_split_value_into_subrounds`):
  contiguous, ceil(remaining / contexts left) each, no empty share."""
  shares, rest = [], tuple(hospitals)
  for left in range(workers, 0, -1):
    if rest:
      size = math.ceil(len(rest) / left)
      shares.append(rest[:size])
      rest = rest[size:]
  return shares


def _rss_mib(pid: int | str = 'self', field: str = 'VmHWM') -> float:
  """A process's peak resident memory since it started or since the last
  `_reset_peak_rss` (MiB), or its current one (`field` 'VmRSS'); 0 if it is gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      return int(re.search(rf'{field}:\s+(\d+) kB', f.read()).group(1)) / 1024
  except (FileNotFoundError, ProcessLookupError):
    return 0.0


def _reset_peak_rss() -> None:
  """Restarts this process's peak RSS from its current RSS (Linux >= 4.0)."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def worker_pids() -> list[int]:
  """This process's worker_binary children (TFF's own, and the nodes')."""
  pids = []
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
      continue
    name, fields = stat[stat.index('(') + 1:stat.rindex(')')], stat[stat.rindex(')') + 2:].split()
    if name == 'worker_binary' and int(fields[1]) == os.getpid() and fields[0] != 'Z':
      pids.append(int(entry))
  return pids


def _cpu_seconds(pid: int) -> float:
  """User + system CPU seconds a process has used (0 if it is gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
  except (FileNotFoundError, ProcessLookupError):
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


@dataclasses.dataclass
class Cell:
  """One measurement: `workers` 0 is the in-process context. Per round, the
  warm-up first: wall seconds, CPU seconds of this (coordinator) process and
  of the workers together. RSS (MiB) of this process before round 1 (what earlier
  cells and imports left), peak RSS during the rounds of this process and of the
  workers (each one's peak, summed); `error` if the cell failed."""
  hospitals: int
  workers: int
  round_seconds: list[float] = dataclasses.field(default_factory=list)
  coordinator_cpu_seconds: list[float] = dataclasses.field(default_factory=list)
  workers_cpu_seconds: list[float] = dataclasses.field(default_factory=list)
  coordinator_rss_at_start_mib: float | None = None
  coordinator_peak_rss_mib: float | None = None
  workers_peak_rss_mib: float | None = None
  error: str | None = None
  weights: list[np.ndarray] | None = dataclasses.field(default=None, repr=False)

  def timed(self, field: str = 'round_seconds') -> float | None:
    """Median of `field` over the rounds after the warm-up (None if none)."""
    values = getattr(self, field)[1:]
    return statistics.median(values) if values else None

  def to_json(self) -> dict:
    result = {k: v for k, v in dataclasses.asdict(self).items() if k != 'weights'}
    result['runtime'] = f'remote, {self.workers} worker(s)' if self.workers else 'in process'
    result['first_round_seconds'] = self.round_seconds[0] if self.round_seconds else None
    result['timed_rounds'] = max(len(self.round_seconds) - 1, 0)
    for field in ('round_seconds', 'coordinator_cpu_seconds', 'workers_cpu_seconds'):
      result[f'median_{field}'] = self.timed(field)
    return result


@contextlib.contextmanager
def _remote_rounds(plan: LearningPlan, data: FederatedData, workers: int, folder: str):
  """Yields `plan` with its client data built in `workers` local nodes, TFF's
  mergeable context over them, and the nodes' worker pids; every node is
  stopped at the end."""
  remote = plan.with_client_data(
      records.dataset_computation(data.feature_shape, CONFIG.batch_size, CONFIG.local_epochs,
                                  CONFIG.seed), records.handle)
  before = set(worker_pids())
  with contextlib.ExitStack() as stack:
    contexts = []
    for k, share in enumerate(worker_shares(data.hospitals, workers)):
      share_folder = os.path.join(folder, f'worker_{k}')
      for hospital in share:
        records.write_records(data, hospital, share_folder)
      port = portpicker.pick_unused_port()
      stack.enter_context(HospitalNode(share_folder, port, None))
      connection = context.connect(f'worker_{k}', f'localhost:{port}', None)
      stack.callback(connection.close)
      contexts.append(context.hospital_context(connection.channel))
    yield (remote, tff.backends.native.create_mergeable_comp_execution_context(contexts),
           sorted(set(worker_pids()) - before))


def run_cell(data: FederatedData, workers: int, rounds: int,
             budget_seconds: float = math.inf) -> Cell:
  """`rounds` FedAvg rounds with all of `data`'s hospitals, in process
  (`workers` 0) or over `workers` local worker_binary processes (initialising
  and reading the weights in process); after round 2, no round starts that
  would, at the last one's pace, end past `budget_seconds` from round 1's
  start. The model's final weights in `weights`."""
  cell = Cell(len(data.hospitals), workers)
  plan = fedavg_plan(data)
  with contextlib.ExitStack() as stack:
    round_context = contextlib.nullcontext
    if workers:
      folder = stack.enter_context(tempfile.TemporaryDirectory(prefix='scale_out_'))
      plan, mergeable, pids = stack.enter_context(_remote_rounds(plan, data, workers, folder))
      round_context = functools.partial(tff.framework.get_context_stack().install, mergeable)
    stack.enter_context(runtime.execution_context())
    state = plan.initialize()
    if not workers:
      pids = runtime.running_workers()
    _reset_peak_rss()
    cell.coordinator_rss_at_start_mib = _rss_mib(field='VmRSS')
    start = time.monotonic()
    for number in range(1, rounds + 1):
      if number > 2 and time.monotonic() - start + cell.round_seconds[-1] > budget_seconds:
        break
      wall, cpu = time.perf_counter(), time.process_time()
      workers_cpu = sum(map(_cpu_seconds, pids))
      with round_context():
        state = plan.run_round(state, Round(number, data.hospitals, data.hospitals)).state
      cell.round_seconds.append(time.perf_counter() - wall)
      cell.coordinator_cpu_seconds.append(time.process_time() - cpu)
      cell.workers_cpu_seconds.append(sum(map(_cpu_seconds, pids)) - workers_cpu)
    cell.coordinator_peak_rss_mib = _rss_mib()
    cell.workers_peak_rss_mib = sum(map(_rss_mib, pids))
    cell.weights = [np.asarray(w) for w in plan.get_model_weights(state).trainable]
  return cell


def _machine() -> dict:
  with open('/proc/meminfo') as f:
    memory_kb = int(re.search(r'MemTotal:\s+(\d+) kB', f.read()).group(1))
  return {'cpus': os.cpu_count(), 'memory_gb': round(memory_kb / 2**20, 1),
          'gpus': len(tf.config.list_physical_devices('GPU')),
          'tensorflow': tf.__version__, 'tensorflow_federated': tff.__version__}


def _now() -> str:
  return time.strftime('%Y-%m-%dT%H:%M:%S%z')


def measure(hospitals, workers, rounds: int, budget_seconds: float, report) -> list[dict]:
  """For each number of hospitals: the in-process cell, then one per K in
  `workers`, each as `Cell.to_json` plus its start and end (local time), the
  load averages then and the worker_binary children left after it; a cell
  that fails is recorded with its error. `report(cell)` after each."""
  cells = []
  for num_hospitals in hospitals:
    data = synthetic_data(num_hospitals)
    for k in (0, *workers):
      started, load = _now(), os.getloadavg()
      try:
        cell = run_cell(data, k, rounds, budget_seconds)
      except Exception as e:  # pylint: disable=broad-except  # Recorded, not hidden.
        cell = Cell(num_hospitals, k, error=f'{type(e).__name__}: {e}')
      cells.append({**cell.to_json(), 'started': started, 'ended': _now(),
                    'loadavg_at_start': load, 'loadavg_at_end': os.getloadavg(),
                    'workers_left': worker_pids()})
      report(cells[-1])
  return cells


_HEADER = ('| pass | hospitals | runtime | first round (s) | median s / round | timed rounds '
           '| coordinator CPU s / round | workers CPU s / round | coordinator peak RSS (MiB; '
           'before round 1) '
           '| workers peak RSS (MiB) | load (1 min) at start | note |\n'
           '|---|---|---|---|---|---|---|---|---|---|---|---|')


def _number(value: float | None, digits: int = 2) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def _row(cell: dict, pass_number: int, rounds: int) -> str:
  """The markdown table's row of a `measure` cell."""
  note = cell['error'] or ''
  if not note and cell['timed_rounds'] < rounds - 1:
    note = f'{cell["timed_rounds"]} of {rounds - 1} rounds timed (--cell_seconds budget)'
  return '| ' + ' | '.join(map(str, (
      pass_number, cell['hospitals'], cell['runtime'],
      _number(cell['first_round_seconds']), _number(cell['median_round_seconds']),
      cell['timed_rounds'], _number(cell['median_coordinator_cpu_seconds']),
      _number(cell['median_workers_cpu_seconds']),
      f'{_number(cell["coordinator_peak_rss_mib"], 0)} '
      f'({_number(cell["coordinator_rss_at_start_mib"], 0)})',
      _number(cell['workers_peak_rss_mib'], 0),
      _number(cell['loadavg_at_start'][0]), note))) + ' |'


def _markdown(result: dict) -> str:
  machine, rounds = result['machine'], result['workload']['rounds']
  rows = [_row(c, p['pass'], rounds) for p in result['passes'] for c in p['cells']]
  return '\n'.join((
      f'## {result["title"]}', '',
      f'{machine["cpus"]} CPU cores, {machine["memory_gb"]} GB, {machine["gpus"]} GPU; '
      f'TensorFlow {machine["tensorflow"]}, TFF {machine["tensorflow_federated"]}; '
      f'{result["workload"]["description"]}. Round 1 is the warm-up (first round); the median '
      'is over the rounds after it. CPU: seconds of CPU per round (median over the timed '
      'rounds); peak RSS during the rounds. The load average counts this binary too (about 2 '
      'while it runs); more is other jobs sharing the machine.', '',
      _HEADER, *rows, ''))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    hospitals, workers = ([int(v) for v in flag.value] for flag in (_HOSPITALS, _WORKERS))
  except ValueError as e:
    raise app.UsageError(f'--sizes and --workers take integers: {e}') from None
  if min(hospitals + workers) < 1 or _ROUNDS.value < 2 or _PASSES.value < 1:
    raise app.UsageError('--sizes and --workers must be >= 1, --cell_rounds >= 2 (a warm-up and '
                         'a timed round), --passes >= 1')
  result = {
      'title': 'Scale-out: seconds per FedAvg round, simulated hospitals over K local '
               'TFF workers',
      'command': 'python -m experiments.scale_out ' + ' '.join(
          f'--{name}={flags.FLAGS[name].serialize().split("=", 1)[1]}'
          for name in ('sizes', 'workers', 'cell_rounds', 'cell_seconds', 'passes')),
      'machine': _machine(),
      'workload': {'description': f'{RECORDS} records of {FEATURES} features per hospital, '
                                  'MLP 20-64-32-1, FedAvg, client SGD 0.1, batch '
                                  f'{CONFIG.batch_size}, {CONFIG.local_epochs} local epoch, '
                                  'every hospital every round',
                   'records_per_hospital': RECORDS, 'features': FEATURES,
                   'hidden_units': [64, 32], 'batch_size': CONFIG.batch_size,
                   'local_epochs': CONFIG.local_epochs, 'client_lr': CONFIG.algorithm.client_lr,
                   'rounds': _ROUNDS.value, 'cell_seconds': _CELL_SECONDS.value},
      'passes': []}
  print(_HEADER, flush=True)
  for number in range(1, _PASSES.value + 1):
    started = _now()
    cells = measure(hospitals, workers, _ROUNDS.value, _CELL_SECONDS.value,
                    lambda cell, n=number: print(_row(cell, n, _ROUNDS.value), flush=True))
    result['passes'].append({'pass': number, 'started': started, 'ended': _now(),
                             'cells': cells})
  result['workers_left_at_end'] = worker_pids()
  os.makedirs(os.path.dirname(_OUTPUT.value) or '.', exist_ok=True)
  with open(_OUTPUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  with open(os.path.splitext(_OUTPUT.value)[0] + '.md', 'w') as f:
    f.write(_markdown(result))
  print(f'wrote {_OUTPUT.value} and its .md')


if __name__ == '__main__':
  app.run(main)
