"""experiments.benchmark and its comparison columns (experiments.benchmark_floors):
correctness, not speed. The TF loop and numpy give the same FedAvg weights as
each other and as TFF's own `build_weighted_fed_avg` on the same batches; the
TFF-direct model is tff_med's; the benchmark writes every cell of its table."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from experiments import benchmark
from experiments import benchmark_floors as floors
from tff_med import runtime
from tff_med.models import ModelConfig, build_keras_model


def _tiny_workload(hidden, weighting, rounds=2, local_epochs=2, batch_size=4):
  """3 hospitals of 10, 9 and 7 records (ragged last batches), 5 features."""
  train, test = floors.synthetic_arrays(3, records=10, test_records=6, features=5)
  sizes = {'h0000': 10, 'h0001': 9, 'h0002': 7}
  train = {h: (x[:sizes[h]], y[:sizes[h]].astype(np.float32).reshape(-1, 1))
           for h, (x, y) in train.items()}
  return floors.Workload(
      name='tiny', hospitals=list(train), train=train,
      test_x=np.concatenate([x for x, _ in test.values()]),
      test_y=np.concatenate([y for _, y in test.values()]), hidden=hidden, rounds=rounds,
      batch_size=batch_size, local_epochs=local_epochs, client_lr=0.1, server_lr=1.0,
      weighting=weighting, seed=3, initial=floors.initial_weights(hidden, 5, seed=0),
      test_sizes=[6, 6, 6])


def _fixed_orders(workload, seed=7):
  """A seeded numpy permutation per hospital, round and pass."""
  rng = np.random.default_rng(seed)
  return {h: np.stack([np.stack([rng.permutation(len(y)) for _ in range(workload.local_epochs)])
                       for _ in range(workload.rounds)]).astype(np.int64)
          for h, (_, y) in workload.train.items()}


def _assert_same(weights_a, weights_b, atol=1e-4):
  assert len(weights_a) == len(weights_b)
  for a, b in zip(weights_a, weights_b):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=atol)


@pytest.mark.parametrize('hidden,weighting', [((), 'uniform'), ((8, 4), 'num_examples')])
def test_tf_loop_and_numpy_give_the_same_weights(hidden, weighting):
  workload = _tiny_workload(hidden, weighting)
  workload.orders = _fixed_orders(workload)
  numpy_result = floors.run('numpy', workload)
  tf_result = floors.run('tf_loop', workload)
  _assert_same(numpy_result['weights'], tf_result['weights'])
  np.testing.assert_allclose(numpy_result['train_loss'], tf_result['train_loss'], rtol=1e-5)
  # They trained: the weights moved.
  assert max(np.abs(w - w0).max() for w, w0 in zip(numpy_result['weights'], workload.initial)) > 1e-3
  assert len(numpy_result['round_seconds']) == len(tf_result['round_seconds']) == 2


def test_the_cnn_tf_loop_is_fedavg_over_keras_sgd_on_the_same_batches():
  """The CNN floor against FedAvg written with Keras fit: per hospital, one fit
  per pass on the records in the workload's order (SGD, no shuffling), then
  the example-weighted mean of the hospitals' models."""
  rng = np.random.default_rng(2)
  sizes = {'a': 9, 'b': 6}
  train = {h: (rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
               rng.integers(0, 2, (n, 1)).astype(np.float32)) for h, n in sizes.items()}
  tff_med_cnn = build_keras_model(ModelConfig('cnn'), (8, 8, 1), seed=1)
  initial = [np.asarray(w) for w in tff_med_cnn.trainable_weights]
  floor_cnn = floors.cnn_model((8, 8, 1))
  floor_cnn.set_weights(initial)  # The floor's CNN is tff_med's: same logits.
  np.testing.assert_allclose(floor_cnn(train['a'][0]), tff_med_cnn(train['a'][0]), atol=1e-6)
  workload = floors.Workload(
      name='tiny_cnn', hospitals=list(train), train=train, test_x=train['a'][0],
      test_y=train['a'][1][:, 0].astype(np.int64), hidden=(), rounds=2, batch_size=4,
      local_epochs=2, client_lr=0.05, server_lr=1.0, weighting='num_examples', seed=0,
      initial=initial, model='cnn')
  workload.orders = _fixed_orders(workload)
  result = floors.run('tf_loop', workload)

  model = floors.cnn_model((8, 8, 1))
  model.compile(optimizer=tf.keras.optimizers.SGD(workload.client_lr),
                loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
  weights = initial
  for r in range(workload.rounds):
    updates = []
    for h, (x, y) in train.items():
      model.set_weights(weights)
      for order in workload.orders[h][r]:
        model.fit(x[order], y[order], batch_size=workload.batch_size, shuffle=False, verbose=0)
      updates.append(model.get_weights())
    total = sum(sizes.values())
    weights = [sum(sizes[h] / total * u[k] for h, u in zip(train, updates))
               for k in range(len(weights))]
  _assert_same(result['weights'], weights, atol=1e-5)
  assert max(np.abs(w - w0).max() for w, w0 in zip(weights, initial)) > 1e-3
  with pytest.raises(ValueError, match='TF loop only'):
    floors.run('numpy', workload)


def test_numpy_gradients_are_tfs():
  workload = _tiny_workload((8, 4), 'uniform')
  x, y = workload.train['h0000']
  weights = [w + 0.1 for w in workload.initial]  # Biases not zero: every term counts.
  loss, grads = floors.numpy_loss_and_grads(weights, x, y)
  variables = [tf.Variable(w) for w in weights]
  with tf.GradientTape() as tape:
    h = tf.constant(x)
    for layer in range(3):
      h = tf.matmul(h, variables[2 * layer]) + variables[2 * layer + 1]
      h = tf.nn.relu(h) if layer < 2 else h
    tf_loss = tf.keras.losses.BinaryCrossentropy(from_logits=True)(y, h)
  np.testing.assert_allclose(loss, float(tf_loss), rtol=1e-5)
  for g, tg in zip(grads, tape.gradient(tf_loss, variables)):
    np.testing.assert_allclose(g, tg.numpy(), atol=1e-6)


@pytest.mark.parametrize('hidden', [(), (64, 32)])
def test_tff_direct_model_starts_from_tff_meds_weights(hidden):
  model = ModelConfig('mlp', hidden) if hidden else ModelConfig('logreg')
  expected = build_keras_model(model, (20,), 2).trainable_weights
  _assert_same(floors.initial_weights(hidden, 20, seed=2), [w.numpy() for w in expected],
               atol=0)


def test_tffs_fed_avg_equals_the_floors_on_the_same_batches():
  # The shuffles depend on TF's global seed where another test set one.
  tf.random.set_seed(None)
  workload = _tiny_workload((8, 4), 'num_examples', local_epochs=2)
  workload.orders = floors.shuffle_orders(workload)
  with runtime.execution_context():
    tff_result = floors.run_tff_direct(workload, set_context=False)
  numpy_result = floors.run('numpy', workload)
  _assert_same(tff_result['weights'], numpy_result['weights'])
  np.testing.assert_allclose(tff_result['train_loss'], numpy_result['train_loss'], rtol=1e-4)


def test_workload_round_trips_through_npz(tmp_path):
  workload = _tiny_workload((), 'uniform')
  workload.orders = _fixed_orders(workload)
  path = str(tmp_path / 'w.npz')
  workload.save(path)
  loaded = floors.Workload.load(path)
  assert loaded.meta() == workload.meta()
  for h in workload.hospitals:
    for a, b in zip(loaded.train[h], workload.train[h]):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.orders[h], workload.orders[h])
  _assert_same(loaded.initial, workload.initial, atol=0)
  split = loaded.test_split()
  np.testing.assert_array_equal(np.concatenate([split[h][1] for h in loaded.hospitals]),
                                workload.test_y)


def test_run_process_times_lines_and_memory():
  measured = benchmark.run_process(
      [sys.executable, '-c', 'import time; time.sleep(0.3); print("round    1/1", flush=True); '
                             'time.sleep(0.3)'])
  assert measured.returncode == 0 and not measured.stopped
  first = measured.first_line_seconds(r'^round +1/')
  assert 0.2 < first < measured.wall_seconds
  assert measured.tree_peak_rss_mib > 0 and measured.maxrss_mib > 0
  stopped = benchmark.run_process([sys.executable, '-c', 'import time; time.sleep(30)'],
                                  timeout=0.5)
  assert stopped.stopped and stopped.wall_seconds < 10


class _StandInCells(benchmark.Cells):
  """Real numpy runs (`python -m experiments.benchmark_floors --impl=numpy`) stand
  in for every column's training, so that the table is filled fast; start-up and
  compare are made-up records."""

  def __init__(self):
    super().__init__(floor=self._floor, heart_tff_med=self._heart_tff_med,
                     cnn_tff_med=lambda workload, folder, data_dir, timeout: self._cnn(),
                     synthetic_tff_med=self._synthetic_tff_med, startup=self._startup,
                     imports=lambda module, timeout: benchmark._import_cell('json', timeout),
                     compare=self._compare)

  @staticmethod
  def _floor(impl, path, workload, folder, timeout):
    del impl
    if workload.model == 'cnn':
      return _StandInCells._cnn()
    return benchmark._floor_cell('numpy', path, workload, folder, timeout)

  @staticmethod
  def _cnn():
    return {**benchmark.Measured(['stand-in'], 20.0, 0, [], 10.0, 9.0, 'now', (1, 1, 1),
                                 (1, 1, 1)).record(),
            'round_seconds': [3.0, 2.0], 'median_round_seconds': 2.0,
            'pooled': {'accuracy': 0.8, 'auc': 0.9}}

  def _heart_tff_med(self, workload, folder, data_dir, timeout):
    path = os.path.join(folder, 'heart.npz')
    workload.save(path)
    return {**self._floor('tff_med', path, workload, folder, timeout),
            'median_round_line_interval_seconds': 0.2, 'first_round_line_seconds': 1.0}

  @staticmethod
  def _synthetic_tff_med(path, folder, timeout, max_rss_mib=None):
    workload = floors.Workload.load(path)
    if workload.orders is None:  # A scale size.
      workload.orders = _fixed_orders(workload)
    result = floors.run('numpy', workload)
    record = benchmark.Measured(['stand-in'], 2.0, 0, [], 300.0, 200.0, 'now', (1, 1, 1),
                                (1, 1, 1)).record()
    return {**record, 'round_seconds': result['round_seconds'],
            'median_round_seconds': benchmark._after_warmup(result['round_seconds']),
            'final_train_loss': result['train_loss'][-1],
            'pooled': benchmark._pooled_metrics(workload, result['weights'])}

  @staticmethod
  def _startup(folder, data_dir, timeout):
    return {**benchmark.Measured(['stand-in'], 3.0, 0, [(2.5, 'round    1/1\n')], 10.0, 9.0,
                                 'now', (1, 1, 1), (1, 1, 1)).record(),
            'first_round_seconds': 2.5}

  @staticmethod
  def _compare(seeds, folder, data_dir, timeout):
    return {**benchmark.Measured(['stand-in'], 50.0, 0, [], 10.0, 9.0, 'now', (1, 1, 1),
                                 (1, 1, 1)).record(), 'seeds': seeds}


def test_benchmark_writes_every_cell(tmp_path, data_dir):
  tf.random.set_seed(None)
  settings = benchmark.Settings(repeats=1, heart_rounds=2, synthetic_hospitals=3,
                                synthetic_rounds=2, scale=((3, 2, 1), (4, 2, 1)),
                                compare_seeds=5, cnn_rounds=2, data_dir=data_dir)
  results = benchmark.run_benchmark(settings, _StandInCells(), log=lambda line: None)
  results['other_runs'] = [benchmark.other_run('A second pass', 'Again.', results)]
  output = str(tmp_path / 'benchmark.json')
  text = benchmark.write_outputs(results, output)
  with open(output) as f:
    written = json.load(f)
  for row in benchmark.ROWS:
    for column in benchmark.COLUMNS:
      assert isinstance(written['table'][row][column], float), (row, column)
      assert written['reference'][row][column] > 0
  for name in ('heart_disease', 'synthetic'):
    assert set(written['accuracy'][name]) == set(benchmark.COLUMNS)
    assert written['agreement'][name]['agree_to_3_decimals']
  # The heart workload is the repo's default set-up for the data set.
  heart = written['workloads']['heart_disease']
  assert (heart['batch_size'], heart['client_lr'], heart['weighting'], heart['hidden']) == (
      4, 0.01, 'uniform', [])
  assert len(heart['hospitals']) == 4
  assert written['startup']['first_round_seconds'] == 2.5
  assert written['startup']['import_tensorflow_seconds'] > 0
  assert [row['hospitals'] for row in written['scale']] == [3, 4]
  assert written['scale'][0]['same_as_table']
  assert all(row['peak_rss_gib'] > 0 for row in written['scale'])
  assert written['compare']['seconds'] == 50.0
  assert set(written['goals']) == {'compare_seeds5', 'first_round', 'heart_round_vs_tf_loop',
                                   'synthetic_round', 'synthetic_round_vs_tf_loop', 'memory',
                                   'linear', 'cnn_round_vs_tf_loop'}
  # The CNN rows: pneumoniamnist's default set-up; both stand-ins took 2.0 s a round.
  assert written['cnn']['workload']['model'] == 'cnn'
  assert len(written['cnn']['workload']['hospitals']) == 10
  assert written['goals']['cnn_round_vs_tf_loop']['measured'] == 1.0
  assert written['goals']['first_round']['met'] and written['goals']['compare_seeds5']['met']
  for record in written['measurements']['heart_disease']['numpy']:
    assert {'started', 'loadavg_before', 'wall_seconds'} <= set(record)
  assert 'weights' not in written['measurements']['heart_disease']['numpy'][0]
  with open(str(tmp_path / 'benchmark.md')) as f:
    assert f.read() == text
  for title in ('whole process (s)', 'per round (ms)', 'MLP 20-64-32-1, per round (s)',
                'Start-up', 'Scale', 'experiments.compare', 'goals', 'A second pass',
                'PneumoniaMNIST CNN'):
    assert title in text
