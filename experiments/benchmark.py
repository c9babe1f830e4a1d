r"""How fast tff_med trains, next to TFF used directly and the same arithmetic
in one TF loop and in numpy (issue 13, "Speed").

    python -m experiments.benchmark --repeats=3

Measures, each in a fresh process (time of day and load averages recorded per
measurement; the medians of --repeats measurements are reported):

- heart_disease (4 hospitals, the repo's defaults for --dataset=heart_disease:
  logreg, FedAvg, 50 rounds, batch 4, one local epoch, client_lr 0.01, hospitals
  weighted uniformly): the whole process's wall time and the median round (rounds
  2..N; round 1 traces and compiles). tff_med: `python -m experiments.train`
  (its metrics.csv `round_seconds`); TFF used directly, the TF loop and numpy:
  `python -m experiments.benchmark_floors` on the same records, initial weights
  and per-round shuffle order.
- --synthetic_hospitals synthetic hospitals of 100 records (20 features), MLP
  20-64-32-1, FedAvg (client_lr 0.1, batch 32, one local epoch): the median
  round; tff_med through the library (`tff_med.training.run` on
  `FederatedData.from_arrays`).
- start-up: from launching `python -m experiments.train --dataset=heart_disease
  --rounds=1` to its first `round    1/` line, and its whole wall time (with the
  import times of TensorFlow and TFF alone).
- scale: tff_med's median round and peak memory at --scale synthetic hospitals
  (the peak of the summed resident memory of the process and its TFF
  worker_binary, sampled every 0.25 s, and the largest single process's peak from
  wait4's rusage).
- `python -m experiments.compare --dataset=heart_disease --seeds=--compare_seeds`,
  once.

Every column's final pooled test accuracy and AUC is recorded; they agree
because every column trains on the same batches. Writes --output (JSON) and
the markdown table beside it (.md). The machine may be shared: the load
averages say how busy it was.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import csv  # pylint: disable=g-import-not-at-top
import dataclasses
import datetime
import json
import math
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from absl import app
from absl import flags
import numpy as np

from experiments import benchmark_floors as floors
from experiments import flags as experiment_flags

_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements per timed cell (medians reported).')
_HEART_ROUNDS = flags.DEFINE_integer('heart_rounds', None, 'Rounds of the heart_disease '
                                     'workload (default: the repo\'s default for the data set).')
_SYNTHETIC_HOSPITALS = flags.DEFINE_integer('synthetic_hospitals', 100, 'Hospitals of the '
                                            'synthetic MLP workload.')
_SYNTHETIC_ROUNDS = flags.DEFINE_integer('synthetic_rounds', 6, 'Rounds of the synthetic '
                                         'workload (round 1 is the warm-up).')
_SCALE = flags.DEFINE_list('scale', ['10', '100', '300', '1000'], 'Synthetic hospitals of '
                           'the scale rows (tff_med only); the size --synthetic_hospitals '
                           'reuses the table\'s measurements.')
_SCALE_ROUNDS = flags.DEFINE_list('scale_rounds', ['6', '6', '3', '3'], 'Rounds per scale '
                                  'size (one per --scale; the last repeats).')
_SCALE_REPEATS = flags.DEFINE_list('scale_repeats', ['3', '3', '3', '1'], 'Measurements per '
                                   'scale size (one per --scale; the last repeats; at most '
                                   '--repeats).')
_MAX_RSS_GB = flags.DEFINE_float('max_rss_gb', 16.0, 'A scale process whose resident memory '
                                 '(with its workers) passes this is stopped and reported so.')
_COMPARE_SEEDS = flags.DEFINE_integer('compare_seeds', 5, 'Seeds of the timed '
                                      'experiments.compare run; 0 skips it.')
_CNN_ROUNDS = flags.DEFINE_integer('cnn_rounds', 3, 'Rounds of the PneumoniaMNIST CNN rows '
                                   '(tff_med and the TF loop, one measurement each); 0 '
                                   'skips them.')
_CELL_TIMEOUT = flags.DEFINE_float('cell_timeout', 1200.0, 'Seconds after which a measured '
                                   'process is stopped.')
_OUTPUT = flags.DEFINE_string('output', 'docs/results/benchmark.json', 'JSON results; the '
                              'markdown table goes beside it (.md).')
_WORKER = flags.DEFINE_enum('worker', None, ['tff_med'], 'Internal: run tff_med on --input '
                            '(a Workload .npz) and write --result.')
_INPUT = flags.DEFINE_string('input', None, 'Internal, with --worker.')
_RESULT = flags.DEFINE_string('result', None, 'Internal, with --worker.')
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ('tff_med', 'tff_direct', 'tf_loop', 'numpy')
COLUMN_TITLES = {'tff_med': 'tff_med', 'tff_direct': 'TFF used directly',
                 'tf_loop': 'same arithmetic in one TF loop', 'numpy': 'in numpy'}
ROWS = ('heart_whole_s', 'heart_round_ms', 'synthetic_round_s')
# The figures on this 2-core machine.
REFERENCE = {
    'heart_whole_s': {'tff_med': 18.5, 'tff_direct': 18.1, 'tf_loop': 5.4, 'numpy': 0.3},
    'heart_round_ms': {'tff_med': 108, 'tff_direct': 117, 'tf_loop': 10, 'numpy': 3.5},
    'synthetic_round_s': {'tff_med': 2.37, 'tff_direct': 2.66, 'tf_loop': 0.50, 'numpy': 0.09},
}
SYNTHETIC = dict(hidden=(64, 32), batch_size=32, local_epochs=1, client_lr=0.1,
                 server_lr=1.0, weighting='num_examples', seed=0)
GOALS = {'compare_seconds': 60.0, 'first_round_seconds': 6.0, 'heart_round_vs_tf_loop': 3.0,
         'synthetic_round_s': 1.1, 'synthetic_round_vs_tf_loop': 2.0, 'memory_gib': 24.0,
         'cnn_round_vs_tf_loop': 1.5}


# ---------------------------------------------------------------------------
# Workloads.

def heart_workload(data_dir: str | None, rounds: int | None = None):
  """Workload of heart_disease with the repo's defaults (logreg); loaded as
  `python -m experiments.train --dataset=heart_disease` loads it."""
  return _dataset_workload('heart_disease', 'logreg', data_dir, rounds)


def cnn_workload(data_dir: str | None, rounds: int):
  """Workload of pneumoniamnist with the repo's defaults (CNN, 10 hospitals)."""
  return _dataset_workload('pneumoniamnist', 'cnn', data_dir, rounds)


def _dataset_workload(dataset: str, model: str, data_dir: str | None, rounds: int | None):
  from tff_med import data as data_lib  # pylint: disable=g-import-not-at-top
  defaults = experiment_flags.DATASET_DEFAULTS[dataset]
  if defaults['model'] != model:
    raise ValueError(f"{dataset}'s default model is {defaults['model']}, not {model}")
  extra = {k: defaults[k] for k in ('num_hospitals', 'partition') if k in defaults}
  data = data_lib.load(data_lib.DataConfig(dataset=dataset, data_dir=data_dir, seed=0, **extra))
  return _workload(data, (), rounds or defaults['rounds'], batch_size=defaults['batch_size'],
                   local_epochs=defaults['local_epochs'], client_lr=defaults['client_lr'],
                   server_lr=experiment_flags.SERVER_LR_DEFAULTS['fedavg'],
                   weighting=defaults.get('client_weighting', 'num_examples'), seed=0,
                   model=model)


def synthetic_workload(num_hospitals: int, rounds: int, orders: bool = True):
  """Workload of `num_hospitals` synthetic hospitals, MLP 20-64-32-1 (SYNTHETIC)."""
  from tff_med.data.federated_data import FederatedData  # pylint: disable=g-import-not-at-top
  train, test = floors.synthetic_arrays(num_hospitals)
  data = FederatedData.from_arrays(f'synthetic_{num_hospitals}', train, test)
  return _workload(data, rounds=rounds, orders=orders, **SYNTHETIC)


def _workload(data, hidden, rounds, batch_size, local_epochs, client_lr, server_lr, weighting,
              seed, orders=True, model='mlp') -> floors.Workload:
  """A FederatedData's records as a `benchmark_floors.Workload`, with tff_med's
  initial weights and (`orders`) its per-round shuffle orders."""
  from tff_med.models import ModelConfig, build_keras_model  # pylint: disable=g-import-not-at-top
  config = (ModelConfig('cnn') if model == 'cnn' else
            ModelConfig('mlp', tuple(hidden)) if hidden else ModelConfig('logreg'))
  initial = [np.asarray(w) for w in
             build_keras_model(config, data.feature_shape, seed).trainable_weights]
  train = {}
  for h in data.hospitals:
    x, y = data.train_arrays(h)
    train[h] = (x, y.astype(np.float32).reshape(-1, 1))
  test_x, test_y = data.pooled('test')
  workload = floors.Workload(
      name=data.name, hospitals=list(data.hospitals), train=train, test_x=test_x,
      test_y=test_y, hidden=tuple(hidden), rounds=rounds, batch_size=batch_size,
      local_epochs=local_epochs, client_lr=client_lr, server_lr=server_lr,
      weighting=weighting, seed=seed, initial=initial,
      test_sizes=[int(data.num_test(h)) for h in data.hospitals], model=model)
  if orders:
    workload.orders = floors.shuffle_orders(workload)
  return workload


# ---------------------------------------------------------------------------
# Measured processes.

@dataclasses.dataclass
class Measured:
  """One process: its wall seconds, when each stdout line came (seconds after
  launch), peak memory, and when and under what load it ran."""
  command: list
  wall_seconds: float
  returncode: int
  lines: list  # [(seconds after launch, line)]
  tree_peak_rss_mib: float  # Process + descendants, summed, sampled.
  maxrss_mib: float  # The largest single process's peak (wait4).
  started: str
  loadavg_before: tuple
  loadavg_after: tuple
  stopped: str | None = None  # Why it was stopped, if it was.

  def first_line_seconds(self, pattern: str) -> float | None:
    for seconds, line in self.lines:
      if re.search(pattern, line):
        return seconds
    return None

  def tail(self, n: int = 15) -> str:
    return ''.join(line for _, line in self.lines[-n:])

  def record(self) -> dict:
    return {'command': ' '.join(self.command[2:]) if self.command[:2] == [sys.executable, '-m']
            else ' '.join(self.command),
            'wall_seconds': self.wall_seconds, 'returncode': self.returncode,
            'tree_peak_rss_mib': self.tree_peak_rss_mib, 'maxrss_mib': self.maxrss_mib,
            'started': self.started, 'loadavg_before': list(self.loadavg_before),
            'loadavg_after': list(self.loadavg_after),
            **({'stopped': self.stopped} if self.stopped else {})}


def _children() -> dict[int, list[int]]:
  """ppid -> pids, from /proc."""
  children = {}
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/stat') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
      continue
    children.setdefault(ppid, []).append(int(entry))
  return children


def _tree(pid: int) -> list[int]:
  """`pid` and its descendants."""
  children, tree, stack = _children(), [], [pid]
  while stack:
    p = stack.pop()
    tree.append(p)
    stack.extend(children.get(p, []))
  return tree


_PAGE_MIB = os.sysconf('SC_PAGE_SIZE') / 2**20


def _rss_mib(pids) -> float:
  total = 0.0
  for pid in pids:
    try:
      with open(f'/proc/{pid}/statm') as f:
        total += int(f.read().split()[1]) * _PAGE_MIB
    except (OSError, IndexError, ValueError):
      pass
  return total


def run_process(command: list, timeout: float | None = None,
                max_rss_mib: float | None = None, env: dict | None = None) -> Measured:
  """Runs `command` from the repository root, timing it and its stdout lines and
  sampling the memory of its process tree; stops the tree (SIGKILL, each process
  by pid) past `timeout` seconds or `max_rss_mib`."""
  loadavg_before, started = os.getloadavg(), datetime.datetime.now().isoformat(timespec='seconds')
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', **(env or {})})
  lines, peak, stopped, done = [], [0.0], [None], threading.Event()

  def read():
    for line in process.stdout:
      lines.append((time.perf_counter() - start, line))

  def watch():
    while not done.wait(0.25):
      tree = _tree(process.pid)
      rss = _rss_mib(tree)
      peak[0] = max(peak[0], rss)
      reason = (f'resident memory {rss / 1024:.1f} GiB passed {max_rss_mib / 1024:.1f} GiB'
                if max_rss_mib and rss > max_rss_mib else
                f'still running after {timeout:.0f} s'
                if timeout and time.perf_counter() - start > timeout else None)
      if reason and not stopped[0]:
        stopped[0] = reason
        for pid in reversed(tree):
          try:
            os.kill(pid, signal.SIGKILL)
          except ProcessLookupError:
            pass

  reader = threading.Thread(target=read, daemon=True)
  watcher = threading.Thread(target=watch, daemon=True)
  reader.start()
  watcher.start()
  _, status, usage = os.wait4(process.pid, 0)
  wall = time.perf_counter() - start
  done.set()
  process.returncode = os.waitstatus_to_exitcode(status)
  watcher.join()
  reader.join(10)  # A descendant left running could hold stdout open.
  return Measured(command, wall, process.returncode, list(lines), peak[0],
                  usage.ru_maxrss / 1024, started, loadavg_before, os.getloadavg(),
                  stopped[0])


def _python(*args) -> list:
  return [sys.executable, '-m', *args]


def _median(values) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def _after_warmup(round_seconds) -> float | None:
  """Median of the rounds after the first (None with a single round)."""
  return _median(round_seconds[1:]) if len(round_seconds) > 1 else None


# ---------------------------------------------------------------------------
# Cells.

def _check(measured: Measured, what: str) -> None:
  if measured.returncode != 0 or measured.stopped:
    raise RuntimeError(f'{what}: exit {measured.returncode}'
                       f'{" (" + measured.stopped + ")" if measured.stopped else ""}:\n'
                       f'{measured.tail()}')


def _pooled_metrics(workload: floors.Workload, weights) -> dict:
  from tff_med.evaluation import binary_metrics  # pylint: disable=g-import-not-at-top
  return binary_metrics(floors.logits(workload, weights, workload.test_x), workload.test_y)


def _floor_cell(impl: str, workload_path: str, workload: floors.Workload, folder: str,
                timeout: float | None) -> dict:
  """One measurement of `impl` (benchmark_floors) on the saved workload."""
  result_path = os.path.join(folder, f'{impl}.json')
  measured = run_process(_python('experiments.benchmark_floors', f'--impl={impl}',
                                 f'--input={workload_path}', f'--output={result_path}'),
                         timeout)
  _check(measured, f'{impl} on {workload.name}')
  with open(result_path) as f:
    result = json.load(f)
  with np.load(os.path.splitext(result_path)[0] + '.npz') as f:
    weights = [f[f'w{k}'] for k in range(len(f.files))]
  return {**measured.record(), 'round_seconds': result['round_seconds'],
          'median_round_seconds': _after_warmup(result['round_seconds']),
          'final_train_loss': result['train_loss'][-1],
          'pooled': _pooled_metrics(workload, weights), 'weights': weights}


def _heart_tff_med_cell(workload: floors.Workload, folder: str, data_dir: str | None,
                        timeout: float | None) -> dict:
  """`python -m experiments.train --dataset=heart_disease` (the defaults)."""
  return _train_cell('heart_disease', workload, folder, data_dir, timeout)


def _cnn_tff_med_cell(workload: floors.Workload, folder: str, data_dir: str | None,
                      timeout: float | None) -> dict:
  """`python -m experiments.train --dataset=pneumoniamnist` (the defaults; one
  evaluation, after the last round)."""
  return _train_cell('pneumoniamnist', workload, folder, data_dir, timeout,
                     f'--eval_every={workload.rounds}')


def _train_cell(dataset: str, workload: floors.Workload, folder: str, data_dir: str | None,
                timeout: float | None, *flags_) -> dict:
  """`python -m experiments.train --dataset=DATASET` for the workload's rounds."""
  output_dir = os.path.join(folder, 'run')
  measured = run_process(_python('experiments.train', f'--dataset={dataset}',
                                 f'--rounds={workload.rounds}', f'--output_dir={output_dir}',
                                 *flags_, *([f'--data_dir={data_dir}'] if data_dir else [])),
                         timeout)
  _check(measured, f'experiments.train on {dataset}')
  round_seconds = _metrics_csv_round_seconds(output_dir)
  with open(os.path.join(output_dir, 'summary.json')) as f:
    summary = json.load(f)
  line_times = [t for t, line in measured.lines if re.match(r'round +\d+/', line)]
  return {**measured.record(), 'round_seconds': round_seconds,
          'median_round_seconds': _after_warmup(round_seconds),
          # Between progress lines: the round plus saving its state and releases.
          'median_round_line_interval_seconds': _median(np.diff(line_times[1:]).tolist()),
          'first_round_line_seconds': line_times[0] if line_times else None,
          'final_train_loss': _metrics_csv_last(output_dir, 'train/loss'),
          'pooled': summary['pooled']}


def _metrics_csv_rows(output_dir: str) -> list[dict]:
  with open(os.path.join(output_dir, 'metrics.csv')) as f:
    return list(csv.DictReader(f))


def _metrics_csv_round_seconds(output_dir: str) -> list[float]:
  return [float(row['round_seconds']) for row in _metrics_csv_rows(output_dir)]


def _metrics_csv_last(output_dir: str, column: str) -> float | None:
  values = [row.get(column) for row in _metrics_csv_rows(output_dir) if row.get(column)]
  return float(values[-1]) if values else None


def _synthetic_tff_med_cell(workload_path: str, folder: str, timeout: float | None,
                            max_rss_mib: float | None = None) -> dict:
  """tff_med's library on the saved workload, in a fresh process (`--worker`)."""
  result_path = os.path.join(folder, 'tff_med.json')
  measured = run_process(_python('experiments.benchmark', '--worker=tff_med',
                                 f'--input={workload_path}', f'--result={result_path}'),
                         timeout, max_rss_mib)
  if measured.stopped and 'memory' in measured.stopped:
    return {**measured.record(), 'round_seconds': [], 'median_round_seconds': None}
  _check(measured, 'tff_med worker')
  with open(result_path) as f:
    result = json.load(f)
  return {**measured.record(), **result,
          'median_round_seconds': _after_warmup(result['round_seconds'])}


def tff_med_worker(workload_path: str, result_path: str) -> None:
  """`--worker=tff_med`: `tff_med.training.run` on the workload's records
  (`FederatedData.from_arrays`), with outputs in a temporary folder; writes the
  rounds' `round_seconds` (metrics.csv), the run's seconds and the pooled test
  metrics."""
  import functools  # pylint: disable=g-import-not-at-top
  from tff_med import training
  from tff_med.algorithms import AlgorithmConfig
  from tff_med.config import TrainConfig
  from tff_med.data.federated_data import FederatedData
  from tff_med.models import ModelConfig, build_keras_model

  workload = floors.Workload.load(workload_path)
  test = workload.test_split()
  data = FederatedData.from_arrays(
      workload.name, {h: (x, y.reshape(-1).astype(np.int64))
                      for h, (x, y) in workload.train.items()}, test)
  model = ModelConfig('mlp', workload.hidden) if workload.hidden else ModelConfig('logreg')
  keras_model_fn = functools.partial(build_keras_model, model, data.feature_shape,
                                     workload.seed)
  config = TrainConfig(
      AlgorithmConfig('fedavg', client_lr=workload.client_lr, server_lr=workload.server_lr,
                      client_weighting=workload.weighting),
      rounds=workload.rounds, batch_size=workload.batch_size,
      local_epochs=workload.local_epochs, eval_every=workload.rounds, seed=workload.seed)
  with tempfile.TemporaryDirectory() as output_dir:
    start = time.perf_counter()
    summary = training.run(data, keras_model_fn, config, output_dir=output_dir,
                           log=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - start
    round_seconds = _metrics_csv_round_seconds(output_dir)
    loss = _metrics_csv_last(output_dir, 'train/loss')
  with open(result_path, 'w') as f:
    json.dump({'round_seconds': round_seconds, 'run_seconds': seconds,
               'final_train_loss': loss, 'pooled': summary['pooled']}, f)


def _startup_cell(folder: str, data_dir: str | None, timeout: float | None) -> dict:
  measured = run_process(_python('experiments.train', '--dataset=heart_disease', '--rounds=1',
                                 f'--output_dir={os.path.join(folder, "run")}',
                                 *([f'--data_dir={data_dir}'] if data_dir else [])), timeout)
  _check(measured, 'experiments.train --rounds=1')
  return {**measured.record(), 'first_round_seconds': measured.first_line_seconds(
      r'^round +1/')}


def _import_cell(module: str, timeout: float | None) -> dict:
  measured = run_process([sys.executable, '-c', f'import {module}'], timeout)
  _check(measured, f'import {module}')
  return measured.record()


def _compare_cell(seeds: int, folder: str, data_dir: str | None,
                  timeout: float | None) -> dict:
  measured = run_process(_python('experiments.compare', '--dataset=heart_disease',
                                 f'--seeds={seeds}', f'--output_dir={folder}',
                                 *([f'--data_dir={data_dir}'] if data_dir else [])), timeout)
  _check(measured, 'experiments.compare')
  return {**measured.record(), 'seeds': seeds}


# ---------------------------------------------------------------------------
# The benchmark.

@dataclasses.dataclass
class Settings:
  repeats: int = 3
  heart_rounds: int | None = None
  synthetic_hospitals: int = 100
  synthetic_rounds: int = 6
  scale: tuple = ((10, 6, 3), (100, 6, 3), (300, 3, 3), (1000, 3, 1))  # (hospitals, rounds, repeats)
  max_rss_gb: float = 16.0
  compare_seeds: int = 5
  cnn_rounds: int = 3  # PneumoniaMNIST CNN rows; 0 skips them.
  cell_timeout: float | None = 1200.0
  data_dir: str | None = None


@dataclasses.dataclass
class Cells:
  """The functions that measure one cell (a seam for tests)."""
  floor: Callable = _floor_cell
  heart_tff_med: Callable = _heart_tff_med_cell
  cnn_tff_med: Callable = _cnn_tff_med_cell
  synthetic_tff_med: Callable = _synthetic_tff_med_cell
  startup: Callable = _startup_cell
  imports: Callable = _import_cell
  compare: Callable = _compare_cell


def run_benchmark(settings: Settings, cells: Cells = Cells(), log=print) -> dict:
  """Measures every cell (columns interleaved within each repeat, so that a busy
  spell of the machine spreads over them) and returns the results (`results_json`)."""
  started = datetime.datetime.now().isoformat(timespec='seconds')
  loadavg_start = os.getloadavg()
  t0 = time.perf_counter()
  timeout = settings.cell_timeout
  heart = heart_workload(settings.data_dir, settings.heart_rounds)
  synthetic = synthetic_workload(settings.synthetic_hospitals, settings.synthetic_rounds)
  measurements = {'heart_disease': {c: [] for c in COLUMNS},
                  'synthetic': {c: [] for c in COLUMNS},
                  'startup': [], 'import_tensorflow': [], 'import_tensorflow_federated': [],
                  'scale': {}, 'compare': None, 'cnn': None}
  with tempfile.TemporaryDirectory(prefix='tff_med_benchmark_') as folder:
    paths = {}
    for name, workload in (('heart_disease', heart), ('synthetic', synthetic)):
      paths[name] = os.path.join(folder, f'{name}.npz')
      workload.save(paths[name])

    def cell_folder(*parts) -> str:
      path = os.path.join(folder, *map(str, parts))
      os.makedirs(path, exist_ok=True)
      return path

    def note(what: str, record: dict) -> None:
      per_round = record.get('median_round_seconds')
      log(f'  {what}: wall {record["wall_seconds"]:.2f} s'
          + (f', round {per_round * 1000:.1f} ms' if per_round is not None else '')
          + (f', pooled acc {record["pooled"]["accuracy"]:.4f}' if 'pooled' in record else '')
          + f', load {record["loadavg_before"][0]:.2f}')

    for k in range(settings.repeats):
      log(f'repeat {k + 1}/{settings.repeats}')
      for name, workload in (('heart_disease', heart), ('synthetic', synthetic)):
        for column in COLUMNS:
          where = cell_folder(name, column, k)
          if column != 'tff_med':
            record = cells.floor(column, paths[name], workload, where, timeout)
          elif name == 'heart_disease':
            record = cells.heart_tff_med(workload, where, settings.data_dir, timeout)
          else:
            record = cells.synthetic_tff_med(paths[name], where, timeout)
          measurements[name][column].append(record)
          note(f'{name} {column}', record)
      for key, module in (('import_tensorflow', 'tensorflow'),
                          ('import_tensorflow_federated', 'tensorflow_federated')):
        measurements[key].append(cells.imports(module, timeout))
      record = cells.startup(cell_folder('startup', k), settings.data_dir, timeout)
      measurements['startup'].append(record)
      log(f'  start-up: first round line at {record["first_round_seconds"]:.2f} s, '
          f'whole {record["wall_seconds"]:.2f} s')

    for hospitals, rounds, repeats in settings.scale:
      if hospitals == settings.synthetic_hospitals:
        measurements['scale'][hospitals] = {'rounds': settings.synthetic_rounds,
                                            'same_as_table': True,
                                            'runs': measurements['synthetic']['tff_med']}
        continue
      path = os.path.join(folder, f'scale_{hospitals}.npz')
      synthetic_workload(hospitals, rounds, orders=False).save(path)
      runs = []
      for k in range(min(repeats, settings.repeats)):
        record = cells.synthetic_tff_med(path, cell_folder('scale', hospitals, k), timeout,
                                         settings.max_rss_gb * 1024)
        runs.append(record)
        log(f'  scale {hospitals}: '
            + (f'round {record["median_round_seconds"]:.2f} s, '
               if record['median_round_seconds'] is not None else '')
            + f'peak RSS {record["tree_peak_rss_mib"] / 1024:.2f} GiB'
            + (f' ({record["stopped"]})' if record.get('stopped') else ''))
        if record.get('stopped'):
          break
      measurements['scale'][hospitals] = {'rounds': rounds, 'same_as_table': False,
                                          'runs': runs}

    if settings.cnn_rounds:
      cnn = cnn_workload(settings.data_dir, settings.cnn_rounds)
      paths['cnn'] = os.path.join(folder, 'cnn.npz')
      cnn.save(paths['cnn'])
      measurements['cnn'] = {
          'workload': {**cnn.meta(), 'train_records': sum(len(y) for _, y in cnn.train.values()),
                       'test_records': len(cnn.test_y)},
          'tff_med': cells.cnn_tff_med(cnn, cell_folder('cnn', 'tff_med'), settings.data_dir,
                                       timeout),
          'tf_loop': cells.floor('tf_loop', paths['cnn'], cnn, cell_folder('cnn', 'tf_loop'),
                                 timeout)}
      for column in ('tff_med', 'tf_loop'):
        note(f'pneumoniamnist cnn {column}', measurements['cnn'][column])

    if settings.compare_seeds:
      measurements['compare'] = cells.compare(settings.compare_seeds,
                                              cell_folder('compare'), settings.data_dir,
                                              timeout)
      log(f'  compare --seeds={settings.compare_seeds}: '
          f'{measurements["compare"]["wall_seconds"]:.1f} s')

  return results_json(settings, heart, synthetic, measurements, {
      'started': started, 'finished': datetime.datetime.now().isoformat(timespec='seconds'),
      'seconds': time.perf_counter() - t0, 'loadavg_start': list(loadavg_start),
      'loadavg_end': list(os.getloadavg())})


def _versions() -> dict:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = {'python': platform.python_version()}
  for package in ('tensorflow', 'tensorflow-federated', 'numpy'):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  return versions


def _git_commit() -> str | None:
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _max_weight_difference(records: dict) -> dict:
  """Per column: the largest |weight - numpy's weight| after the last round (where
  the column reports its weights)."""
  reference = records['numpy'][0].get('weights') if records['numpy'] else None
  differences = {}
  for column, runs in records.items():
    if runs and runs[0].get('weights') is not None and reference is not None:
      differences[column] = float(max(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                                      for a, b in zip(runs[0]['weights'], reference)))
  return differences


def results_json(settings: Settings, heart: floors.Workload, synthetic: floors.Workload,
                 measurements: dict, run: dict) -> dict:
  """The JSON document: table (medians), accuracies, start-up, scale, compare,
  goals, and every measurement."""
  table = {row: {} for row in ROWS}
  accuracy, agreement = {}, {}
  for name, row_whole, row_round, unit in (
      ('heart_disease', 'heart_whole_s', 'heart_round_ms', 1000.0),
      ('synthetic', None, 'synthetic_round_s', 1.0)):
    accuracy[name] = {}
    for column in COLUMNS:
      runs = measurements[name][column]
      if row_whole:
        table[row_whole][column] = _median(r['wall_seconds'] for r in runs)
      per_round = _median(r['median_round_seconds'] for r in runs)
      table[row_round][column] = None if per_round is None else per_round * unit
      accuracy[name][column] = {
          'pooled_accuracy': runs[0]['pooled']['accuracy'], 'pooled_auc': runs[0]['pooled']['auc'],
          'final_train_loss': runs[0].get('final_train_loss'),
          'same_in_every_repeat': len({json.dumps(r['pooled'], sort_keys=True)
                                       for r in runs}) == 1}
    values = [a['pooled_accuracy'] for a in accuracy[name].values()]
    aucs = [a['pooled_auc'] for a in accuracy[name].values()]
    agreement[name] = {'accuracy_spread': max(values) - min(values),
                       'auc_spread': max(aucs) - min(aucs),
                       'agree_to_3_decimals': max(values) - min(values) < 5e-4,
                       'max_abs_weight_difference_to_numpy': _max_weight_difference(
                           measurements[name])}
  startup = {
      'command': 'python -m experiments.train --dataset=heart_disease --rounds=1 '
                 '--output_dir=TMP',
      'first_round_seconds': _median(r['first_round_seconds'] for r in measurements['startup']),
      'whole_seconds': _median(r['wall_seconds'] for r in measurements['startup']),
      'import_tensorflow_seconds': _median(r['wall_seconds']
                                           for r in measurements['import_tensorflow']),
      'import_tensorflow_federated_seconds': _median(
          r['wall_seconds'] for r in measurements['import_tensorflow_federated'])}
  scale = []
  for hospitals, entry in sorted(measurements['scale'].items()):
    runs = entry['runs']
    stopped = [r['stopped'] for r in runs if r.get('stopped')]
    scale.append({
        'hospitals': hospitals, 'rounds': entry['rounds'], 'measurements': len(runs),
        'same_as_table': entry['same_as_table'],
        'median_round_seconds': _median(r['median_round_seconds'] for r in runs),
        'first_round_seconds': _median(r['round_seconds'][0] for r in runs if r['round_seconds']),
        'whole_seconds': _median(r['wall_seconds'] for r in runs),
        'peak_rss_gib': max(r['tree_peak_rss_mib'] for r in runs) / 1024,
        'largest_process_maxrss_gib': max(r['maxrss_mib'] for r in runs) / 1024,
        **({'stopped': stopped[0]} if stopped else {})})
  for row in scale:
    row['seconds_per_hospital'] = (row['median_round_seconds'] / row['hospitals']
                                   if row['median_round_seconds'] else None)
  compare = measurements['compare']
  strip = lambda r: {k: v for k, v in r.items() if k != 'weights'}
  cnn = measurements['cnn'] and {
      'command': 'python -m experiments.train --dataset=pneumoniamnist '
                 f'--rounds={measurements["cnn"]["workload"]["rounds"]}',
      'workload': measurements['cnn']['workload'],
      **{column: {'median_round_seconds': measurements['cnn'][column]['median_round_seconds'],
                  'round_seconds': measurements['cnn'][column]['round_seconds'],
                  'wall_seconds': measurements['cnn'][column]['wall_seconds'],
                  'pooled': measurements['cnn'][column]['pooled']}
         for column in ('tff_med', 'tf_loop')}}
  goals = _goals(table, startup, scale, compare, cnn)
  return {
      'issue': 13,
      'run': {**run, 'command': 'python -m experiments.benchmark ' + ' '.join(
          f'--{k}={v}' for k, v in _settings_flags(settings).items()),
              'cpus': os.cpu_count(), 'machine': platform.machine(),
              'versions': _versions(), 'git_commit': _git_commit(),
              'note': 'wall-clock times on a machine other jobs share: see each '
                      'measurement\'s load averages; medians of the repeats'},
      'settings': dataclasses.asdict(settings),
      'workloads': {'heart_disease': {**heart.meta(), 'model': 'logreg',
                                      'train_records': sum(len(y) for _, y in heart.train.values()),
                                      'test_records': len(heart.test_y)},
                    'synthetic': {**synthetic.meta(), 'model': 'mlp 20-64-32-1',
                                  'train_records': sum(len(y) for _, y in
                                                       synthetic.train.values()),
                                  'test_records': len(synthetic.test_y)}},
      'table': table,
      'units': {'heart_whole_s': 's', 'heart_round_ms': 'ms', 'synthetic_round_s': 's'},
      'reference': REFERENCE,
      'accuracy': accuracy,
      'agreement': agreement,
      'startup': startup,
      'scale': scale,
      'compare': None if compare is None else {
          'command': f'python -m experiments.compare --dataset=heart_disease '
                     f'--seeds={compare["seeds"]}', 'seconds': compare['wall_seconds'],
          'started': compare['started'], 'loadavg_before': compare['loadavg_before']},
      'cnn': cnn,
      'goals': goals,
      'measurements': {
          'heart_disease': {c: [strip(r) for r in runs]
                            for c, runs in measurements['heart_disease'].items()},
          'synthetic': {c: [strip(r) for r in runs]
                        for c, runs in measurements['synthetic'].items()},
          'startup': measurements['startup'],
          'import_tensorflow': measurements['import_tensorflow'],
          'import_tensorflow_federated': measurements['import_tensorflow_federated'],
          'scale': {str(h): [strip(r) for r in e['runs']] if not e['same_as_table']
                    else 'the synthetic tff_med measurements'
                    for h, e in measurements['scale'].items()},
          'compare': compare,
          'cnn': measurements['cnn'] and {c: strip(measurements['cnn'][c])
                                          for c in ('tff_med', 'tf_loop')}},
  }


def _settings_flags(settings: Settings) -> dict:
  flags_ = {'repeats': settings.repeats, 'synthetic_hospitals': settings.synthetic_hospitals,
            'synthetic_rounds': settings.synthetic_rounds,
            'scale': ','.join(str(h) for h, _, _ in settings.scale),
            'scale_rounds': ','.join(str(r) for _, r, _ in settings.scale),
            'scale_repeats': ','.join(str(r) for _, _, r in settings.scale),
            'compare_seeds': settings.compare_seeds, 'cnn_rounds': settings.cnn_rounds}
  if settings.heart_rounds:
    flags_['heart_rounds'] = settings.heart_rounds
  return flags_


def _ratio(a, b):
  return a / b if a is not None and b else None


def _goals(table: dict, startup: dict, scale: list, compare: dict | None,
           cnn: dict | None) -> dict:
  """Each of the issue's goals: the goal, the measured figure, met or not."""
  goals = {}

  def add(name, goal, measured, met, text):
    goals[name] = {'goal': goal, 'measured': measured,
                   'met': None if measured is None else bool(met), 'text': text}

  seconds = compare['wall_seconds'] if compare else None
  add('compare_seeds5', GOALS['compare_seconds'], seconds,
      seconds is not None and seconds <= GOALS['compare_seconds'],
      'experiments.compare --dataset=heart_disease --seeds=5 under 60 s')
  first = startup['first_round_seconds']
  add('first_round', GOALS['first_round_seconds'], first,
      first is not None and first <= GOALS['first_round_seconds'],
      'first round line within 6 s of launch')
  ratio = _ratio(table['heart_round_ms'].get('tff_med'), table['heart_round_ms'].get('tf_loop'))
  add('heart_round_vs_tf_loop', GOALS['heart_round_vs_tf_loop'], ratio,
      ratio is not None and ratio <= GOALS['heart_round_vs_tf_loop'],
      'per round at 4 hospitals within 3x the TF loop')
  per_round = table['synthetic_round_s'].get('tff_med')
  add('synthetic_round', GOALS['synthetic_round_s'], per_round,
      per_round is not None and per_round <= GOALS['synthetic_round_s'],
      'per round at the synthetic hospitals <= 1.1 s')
  ratio = _ratio(per_round, table['synthetic_round_s'].get('tf_loop'))
  add('synthetic_round_vs_tf_loop', GOALS['synthetic_round_vs_tf_loop'], ratio,
      ratio is not None and ratio <= GOALS['synthetic_round_vs_tf_loop'],
      'per round at the synthetic hospitals within 2x the TF loop')
  ratio = cnn and _ratio(cnn['tff_med']['median_round_seconds'],
                         cnn['tf_loop']['median_round_seconds'])
  add('cnn_round_vs_tf_loop', GOALS['cnn_round_vs_tf_loop'], ratio,
      ratio is not None and ratio <= GOALS['cnn_round_vs_tf_loop'],
      'PneumoniaMNIST CNN (10 hospitals) per round within 1.5x the TF loop')
  largest = max(scale, key=lambda r: r['hospitals']) if scale else None
  memory = largest['peak_rss_gib'] if largest else None
  add('memory', GOALS['memory_gib'], memory,
      largest is not None and not largest.get('stopped') and memory <= GOALS['memory_gib'],
      f'{largest["hospitals"] if largest else "?"} hospitals in 24 GB')
  timed = [r for r in scale if r.get('seconds_per_hospital')]
  if len(timed) >= 2:
    per_hospital = {r['hospitals']: r['seconds_per_hospital'] for r in timed}
    base = min((h for h in per_hospital if h >= 100), default=min(per_hospital))
    ratio = per_hospital[max(per_hospital)] / per_hospital[base]
    add('linear', 1.25, ratio, ratio <= 1.25,
        f'time linear in hospitals: seconds per hospital per round at {max(per_hospital)} '
        f'over that at {base} (1.0 is linear; met here if <= 1.25)')
  return goals


# ---------------------------------------------------------------------------
# Markdown.

def _fmt(value, digits: int = 2) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if abs(value) >= 100:
    return f'{value:.0f}'
  return f'{value:.{digits}f}' if abs(value) >= 1 or value == 0 else f'{value:.{digits}g}'


def _fmt_cell(row: str, value) -> str:
  """A table cell in its row's precision."""
  if value is None:
    return 'n/a'
  if row == 'heart_whole_s':
    return f'{value:.1f}'
  if row == 'heart_round_ms':
    return f'{value:.0f}' if value >= 10 else f'{value:.1f}'
  return f'{value:.2f}' if value >= 0.1 else f'{value:.3f}'


def markdown(results: dict) -> str:
  """The tables and notes of docs/results/benchmark.md."""
  heart, synthetic = results['workloads']['heart_disease'], results['workloads']['synthetic']
  run = results['run']
  titles = {
      'heart_whole_s': f'heart_disease, {len(heart["hospitals"])} hospitals, logreg, '
                       f'{heart["rounds"]} rounds: whole process (s)',
      'heart_round_ms': 'same, per round (ms)',
      'synthetic_round_s': f'{len(synthetic["hospitals"])} synthetic hospitals x 100 records, '
                           'MLP 20-64-32-1, per round (s)'}
  lines = [
      '# Speed: tff_med next to TFF used directly, one TF loop and numpy',
      '',
      f'`{run["command"]}`, {run["started"]} to {run["finished"]} '
      f'({run["seconds"] / 60:.1f} min), {run["cpus"]} CPUs, load averages '
      f'{", ".join(f"{v:.2f}" for v in run["loadavg_start"])} at the start and '
      f'{", ".join(f"{v:.2f}" for v in run["loadavg_end"])} at the end; TensorFlow '
      f'{run["versions"]["tensorflow"]}, TFF {run["versions"]["tensorflow-federated"]}.',
      '',
      f'Medians of {results["settings"]["repeats"]} measurements, each in a fresh process; '
      'in parentheses the issue\'s figures on this machine. The machine is shared with '
      'other jobs, so timings are noisy: every measurement\'s time of day and load '
      'averages are in benchmark.json.',
      '',
      '| workload | ' + ' | '.join(COLUMN_TITLES[c] for c in COLUMNS) + ' |',
      '|---|' + '---|' * len(COLUMNS),
  ]
  for row in ROWS:
    lines.append(f'| {titles[row]} | ' + ' | '.join(
        f'{_fmt_cell(row, results["table"][row].get(c))} '
        f'({_fmt_cell(row, results["reference"][row][c])})'
        for c in COLUMNS) + ' |')
  lines += ['', 'Per round: the median of rounds 2..N (round 1 traces and compiles); '
            'tff_med\'s is metrics.csv\'s `round_seconds` (the round itself, without saving '
            'its state and releases), the others time their own rounds. Whole process: '
            'launch to exit, Python start and imports included; the three comparison columns '
            'start from the prepared arrays (`experiments.benchmark_floors`), tff_med reads '
            'and preprocesses the CSV files itself.']
  interval = _median(r.get('median_round_line_interval_seconds')
                     for r in results['measurements']['heart_disease']['tff_med'])
  if interval:
    lines += ['', f'tff_med\'s progress lines on heart_disease come '
              f'{interval * 1000:.0f} ms apart (median): the round plus saving its program '
              'state, the audit log and metrics.']
  lines += ['', '## Same result in every column', '',
            '| workload | ' + ' | '.join(COLUMN_TITLES[c] for c in COLUMNS) + ' |',
            '|---|' + '---|' * len(COLUMNS)]
  for name in ('heart_disease', 'synthetic'):
    acc = results['accuracy'][name]
    lines.append(f'| {name}: pooled test accuracy / AUC | ' + ' | '.join(
        f'{acc[c]["pooled_accuracy"]:.4f} / {acc[c]["pooled_auc"]:.4f}' for c in COLUMNS) + ' |')
  for name in ('heart_disease', 'synthetic'):
    agreement = results['agreement'][name]
    differences = ', '.join(f'{COLUMN_TITLES[c]} {v:.1e}' for c, v in
                            agreement['max_abs_weight_difference_to_numpy'].items()
                            if c != 'numpy')
    lines.append('')
    lines.append(f'{name}: accuracies differ by at most {agreement["accuracy_spread"]:.4f}, '
                 f'AUCs by {agreement["auc_spread"]:.4f}; largest final-weight difference to '
                 f'numpy: {differences}.')
  lines += ['', 'Every column trains on the same batches: the floors are fed the record '
            'order that tff_med\'s tf.data shuffle (seed `seed * 100003 + round`) gives each '
            'hospital each round, and TFF used directly shuffles as tff_med does. '
            'Same initial weights (tff_med\'s seeded Glorot), FedAvg with the server '
            'step 1.0.']
  startup = results['startup']
  lines += ['', '## Start-up', '',
            f'`{startup["command"]}`: first `round    1/` line '
            f'{_fmt(startup["first_round_seconds"])} s after launch, exits after '
            f'{_fmt(startup["whole_seconds"])} s. For scale: `python -c "import tensorflow"` '
            f'takes {_fmt(startup["import_tensorflow_seconds"])} s, `import '
            f'tensorflow_federated` {_fmt(startup["import_tensorflow_federated_seconds"])} s.']
  lines += ['', '## Scale (tff_med in process, MLP 20-64-32-1, 100 records per hospital)', '',
            '| hospitals | rounds | measurements | per round (s) | per hospital (ms) | '
            'first round (s) | peak RSS, process + worker (GiB) | largest process (GiB) |',
            '|---|---|---|---|---|---|---|---|']
  for row in results['scale']:
    lines.append(
        f'| {row["hospitals"]} | {row["rounds"]} | {row["measurements"]} | '
        f'{_fmt(row["median_round_seconds"])} | '
        f'{_fmt(row["seconds_per_hospital"] * 1000 if row["seconds_per_hospital"] else None)} | '
        f'{_fmt(row["first_round_seconds"])} | {_fmt(row["peak_rss_gib"])} | '
        f'{_fmt(row["largest_process_maxrss_gib"])} |'
        + (f' stopped: {row["stopped"]}' if row.get('stopped') else ''))
  lines += ['', 'Peak RSS: the summed resident memory of the Python process and its TFF '
            'worker_binary, sampled every 0.25 s; largest process: the peak of the largest '
            'single one (wait4\'s ru_maxrss).']
  if results['compare']:
    lines += ['', '## experiments.compare', '',
              f'`{results["compare"]["command"]}`: {_fmt(results["compare"]["seconds"])} s '
              f'(one measurement, started {results["compare"]["started"]} at load average '
              f'{results["compare"]["loadavg_before"][0]:.2f}).']
  cnn = results.get('cnn')
  if cnn:
    rounds = cnn['workload']['rounds']
    lines += ['', '## PneumoniaMNIST CNN, 10 hospitals', '',
              f'`{cnn["command"]}` next to the same FedAvg in one TF loop '
              f'(`benchmark_floors`, Keras CNN, same initial weights and batches), '
              f'{rounds} rounds, one measurement each; per round: median of rounds 2..'
              f'{rounds}.', '',
              '| | tff_med | same arithmetic in one TF loop |', '|---|---|---|',
              f'| per round (s) | {_fmt(cnn["tff_med"]["median_round_seconds"])} | '
              f'{_fmt(cnn["tf_loop"]["median_round_seconds"])} |',
              f'| whole process (s) | {_fmt(cnn["tff_med"]["wall_seconds"])} | '
              f'{_fmt(cnn["tf_loop"]["wall_seconds"])} |',
              f'| pooled test accuracy / AUC | {cnn["tff_med"]["pooled"]["accuracy"]:.4f} / '
              f'{cnn["tff_med"]["pooled"]["auc"]:.4f} | '
              f'{cnn["tf_loop"]["pooled"]["accuracy"]:.4f} / '
              f'{cnn["tf_loop"]["pooled"]["auc"]:.4f} |']
  for other in results.get('other_runs', []):
    lines += ['', f'## {other["title"]}', '', other['description']]
    if other.get('table'):
      lines += ['', '| workload | ' + ' | '.join(COLUMN_TITLES[c] for c in COLUMNS) + ' |',
                '|---|' + '---|' * len(COLUMNS)]
      for row in ROWS:
        lines.append(f'| {titles[row]} | ' + ' | '.join(
            _fmt_cell(row, other['table'][row].get(c)) for c in COLUMNS) + ' |')
  lines += ['', '## The issue\'s goals (the figures of the run at the top)', '',
            '| goal | measured | met |', '|---|---|---|']
  for goal in results['goals'].values():
    met = {True: 'yes', False: 'no', None: 'not measured'}[goal['met']]
    lines.append(f'| {goal["text"]} (goal {_fmt(goal["goal"])}) | {_fmt(goal["measured"])} | '
                 f'{met} |')
  return '\n'.join(lines) + '\n'


def other_run(title: str, description: str, results: dict | None = None) -> dict:
  """An entry of the JSON's `other_runs` (a second pass, a re-measured cell),
  rendered after the scale table; `results` (another run's JSON) adds its table
  and run record."""
  entry = {'title': title, 'description': description}
  if results:
    entry.update(table=results['table'], run=results['run'], startup=results['startup'],
                 agreement=results['agreement'])
  return entry


def write_outputs(results: dict, output: str) -> str:
  """Writes the JSON to `output` and the markdown beside it; returns the markdown."""
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w') as f:
    json.dump(results, f, indent=1, allow_nan=True, default=_json_default)
    f.write('\n')
  text = markdown(results)
  with open(os.path.splitext(output)[0] + '.md', 'w') as f:
    f.write(text)
  return text


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _int_list(name: str) -> list[int]:
  try:
    return [int(v) for v in FLAGS[name].value]
  except ValueError:
    raise app.UsageError(f'--{name}: expected integers') from None


def settings_from_flags() -> Settings:
  sizes, rounds, repeats = _int_list('scale'), _int_list('scale_rounds'), _int_list('scale_repeats')
  if not rounds or not repeats:
    raise app.UsageError('--scale_rounds and --scale_repeats need at least one value')
  pad = lambda values: (values + [values[-1]] * len(sizes))[:len(sizes)]
  return Settings(repeats=_REPEATS.value, heart_rounds=_HEART_ROUNDS.value,
                  synthetic_hospitals=_SYNTHETIC_HOSPITALS.value,
                  synthetic_rounds=_SYNTHETIC_ROUNDS.value,
                  scale=tuple(zip(sizes, pad(rounds), pad(repeats))),
                  max_rss_gb=_MAX_RSS_GB.value, compare_seeds=_COMPARE_SEEDS.value,
                  cnn_rounds=_CNN_ROUNDS.value,
                  cell_timeout=_CELL_TIMEOUT.value, data_dir=FLAGS.data_dir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _WORKER.value:
    tff_med_worker(_INPUT.value, _RESULT.value)
    return
  print(write_outputs(run_benchmark(settings_from_flags(), log=lambda s: print(s, flush=True)),
                      _OUTPUT.value))
  print(f'wrote {_OUTPUT.value} and {os.path.splitext(_OUTPUT.value)[0]}.md')


if __name__ == '__main__':
  app.run(main)
