r"""The comparison columns of `experiments.benchmark`: the same FedAvg that
tff_med runs, written three other ways.

- `tff_direct`: TFF used directly (`tff.learning.algorithms.build_weighted_fed_avg`
  over `tff.learning.models.from_keras_model`, TFF's local C++ context, tf.data
  datasets shuffled as tff_med shuffles them); nothing from tff_med.
- `tf_loop`: one Python loop of rounds; per hospital a `tf.function` runs the
  local SGD epochs on its batches from the global weights; the server takes the
  weighted average of the results.
- `numpy`: the same arithmetic with gradients written by hand (logistic
  regression, or an MLP with ReLU hidden layers; sigmoid cross-entropy on the
  one logit).

A `Workload` holds everything the run needs (the hospitals' training arrays,
the pooled test set, the initial weights, the hyper-parameters and, for the
two floors, each hospital's record order in each round), so that every column
trains on the same batches. `python -m experiments.benchmark_floors --impl=numpy
--input=W.npz --output=R.json` runs one column in a fresh process (its final
weights go to R.npz): this module imports only numpy at the top, so the numpy
column's process never loads TensorFlow.

FedAvg as TFF runs it: each hospital starts from the global weights w and runs
SGD (step `client_lr`, batches of `batch_size` records, `local_epochs` passes,
each reshuffled; the last batch of a pass may be smaller) on the mean sigmoid
cross-entropy; its update is w - w_h; the server takes the average of the
updates weighted by 1 (`uniform`) or by the records seen (`num_examples`) and
steps w <- w - server_lr * average.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

WEIGHTINGS = ('uniform', 'num_examples')
IMPLEMENTATIONS = ('tff_direct', 'tf_loop', 'numpy')


@dataclasses.dataclass
class Workload:
  """One benchmark workload.

  Attributes:
    name: e.g. 'heart_disease' or 'synthetic_100'.
    hospitals: hospital names, in order.
    train: hospital -> (x float32 [n, d], y float32 [n, 1]).
    test_x, test_y: the pooled test set (float32 [m, d], int64 [m]).
    hidden: the MLP's hidden widths; () is logistic regression.
    model: 'mlp' (dense layers of `hidden`) or 'cnn' (`cnn_model`, images;
      the TF loop only).
    rounds, batch_size, local_epochs, client_lr, server_lr, weighting, seed:
      FedAvg's settings (`weighting` one of WEIGHTINGS; `seed`: round r's
      shuffle seed is seed * 100003 + r, as in tff_med).
    initial: the initial weights [kernel, bias, ...] (Keras' order).
    orders: hospital -> int64 [rounds, local_epochs, n], the record order of
      each round and pass (`shuffle_orders`); None where only TFF shuffles.
    test_sizes: each hospital's share of the pooled test set, in order.
  """
  name: str
  hospitals: list
  train: dict
  test_x: np.ndarray
  test_y: np.ndarray
  hidden: tuple
  rounds: int
  batch_size: int
  local_epochs: int
  client_lr: float
  server_lr: float
  weighting: str
  seed: int
  initial: list
  orders: dict | None = None
  test_sizes: list | None = None
  model: str = 'mlp'

  def meta(self) -> dict:
    return {k: getattr(self, k) for k in ('name', 'hospitals', 'hidden', 'rounds', 'batch_size',
                                           'local_epochs', 'client_lr', 'server_lr',
                                           'weighting', 'seed', 'test_sizes', 'model')}

  def save(self, path: str) -> None:
    arrays = {'meta': np.array(json.dumps({**self.meta(), 'hidden': list(self.hidden),
                                           'has_orders': self.orders is not None,
                                           'num_initial': len(self.initial)})),
              'test_x': self.test_x, 'test_y': self.test_y}
    for k, w in enumerate(self.initial):
      arrays[f'initial_{k}'] = w
    for i, h in enumerate(self.hospitals):
      arrays[f'x_{i}'], arrays[f'y_{i}'] = self.train[h]
      if self.orders is not None:
        arrays[f'order_{i}'] = self.orders[h]
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path: str) -> 'Workload':
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f['meta']))
      hospitals = meta['hospitals']
      initial = [f[f'initial_{k}'] for k in range(meta['num_initial'])]
      train = {h: (f[f'x_{i}'], f[f'y_{i}']) for i, h in enumerate(hospitals)}
      orders = ({h: f[f'order_{i}'] for i, h in enumerate(hospitals)}
                if meta['has_orders'] else None)
      return cls(name=meta['name'], hospitals=hospitals, train=train, test_x=f['test_x'],
                 test_y=f['test_y'], hidden=tuple(meta['hidden']), rounds=meta['rounds'],
                 batch_size=meta['batch_size'], local_epochs=meta['local_epochs'],
                 client_lr=meta['client_lr'], server_lr=meta['server_lr'],
                 weighting=meta['weighting'], seed=meta['seed'], initial=initial,
                 orders=orders, test_sizes=meta['test_sizes'], model=meta['model'])

  def test_split(self) -> dict:
    """hospital -> (x, y) of its own test records (needs `test_sizes`)."""
    ends = np.cumsum(self.test_sizes)
    return {h: (self.test_x[end - size:end], self.test_y[end - size:end])
            for h, size, end in zip(self.hospitals, self.test_sizes, ends)}

  def client_weight(self, hospital: str) -> float:
    """A hospital's weight in the average (TFF: 1, or the examples it trained on)."""
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f'weighting={self.weighting!r}: choose one of {WEIGHTINGS}')
    return 1.0 if self.weighting == 'uniform' else float(
        len(self.train[hospital][1]) * self.local_epochs)


def shuffle_seed(seed: int, round_num: int) -> int:
  """The tf.data shuffle seed of round `round_num` (1-based), as tff_med's
  `Task.dataset` sets it."""
  return seed * 100003 + round_num


# ---------------------------------------------------------------------------
# Synthetic hospitals (numpy only).

FEATURES, RECORDS, TEST_RECORDS = 20, 100, 20


def synthetic_arrays(num_hospitals: int, seed: int = 0, records: int = RECORDS,
                     test_records: int = TEST_RECORDS, features: int = FEATURES):
  """(train, test): hospital 'h0000', ... -> (x float32 [n, features], y int64 [n]).
  Standard-normal features shifted per hospital; label 1 where a shared linear
  score plus noise is positive."""
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=features)
  train, test = {}, {}
  for k in range(num_hospitals):
    x = (rng.normal(size=(records + test_records, features))
         + rng.normal(scale=0.5, size=features)).astype(np.float32)
    y = (x @ weights + rng.normal(size=len(x)) > 0).astype(np.int64)
    train[f'h{k:04d}'], test[f'h{k:04d}'] = (x[:records], y[:records]), (x[records:], y[records:])
  return train, test


# ---------------------------------------------------------------------------
# numpy.

def _sigmoid(z: np.ndarray) -> np.ndarray:
  return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(z.dtype)


def numpy_logits(weights, x: np.ndarray) -> np.ndarray:
  """The model's logits [n] (ReLU hidden layers, one linear output)."""
  h = x
  layers = len(weights) // 2
  for layer in range(layers):
    h = h @ weights[2 * layer] + weights[2 * layer + 1]
    if layer < layers - 1:
      h = np.maximum(h, 0)
  return h.reshape(-1)


def numpy_loss_and_grads(weights, x: np.ndarray, y: np.ndarray):
  """(mean sigmoid cross-entropy of the batch, gradients [dW1, db1, ...])."""
  layers = len(weights) // 2
  inputs, h = [], x
  for layer in range(layers):
    inputs.append(h)
    h = h @ weights[2 * layer] + weights[2 * layer + 1]
    if layer < layers - 1:
      h = np.maximum(h, 0)
  z = h
  n = np.float32(len(x))
  loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
  dz = (_sigmoid(z) - y) / n
  grads = [None] * len(weights)
  for layer in range(layers - 1, -1, -1):
    grads[2 * layer] = inputs[layer].T @ dz
    grads[2 * layer + 1] = dz.sum(axis=0)
    if layer:
      dz = (dz @ weights[2 * layer].T) * (inputs[layer] > 0)
  return loss, grads


def numpy_local(weights, x: np.ndarray, y: np.ndarray, order: np.ndarray, lr: float,
                batch_size: int):
  """(weights after local SGD over `order` [epochs, n], the batches' losses summed
  weighted by their records, the records seen)."""
  w = [a.copy() for a in weights]
  lr = np.float32(lr)
  loss_sum, seen = 0.0, 0
  for epoch in order:
    xe, ye = x[epoch], y[epoch]
    for start in range(0, len(epoch), batch_size):
      xb, yb = xe[start:start + batch_size], ye[start:start + batch_size]
      loss, grads = numpy_loss_and_grads(w, xb, yb)
      for a, g in zip(w, grads):
        a -= lr * g
      loss_sum, seen = loss_sum + loss * len(xb), seen + len(xb)
  return w, loss_sum, seen


def _server_step(weights, client_weights, factors, server_lr):
  """w - server_lr * weighted mean of (w - w_h), in numpy float32."""
  total = np.float32(sum(factors))
  new = []
  for k, w in enumerate(weights):
    update = sum(np.float32(f) * (w - cw[k]) for f, cw in zip(factors, client_weights)) / total
    new.append((w - np.float32(server_lr) * update).astype(np.float32))
  return new


def run_numpy(workload: Workload, log=None) -> dict:
  """FedAvg in numpy: {'weights', 'round_seconds', 'train_loss'} (per round, the
  mean loss over the records trained on, each at its batch's forward pass, as
  TFF's training-loss metric reports it)."""
  w = [np.asarray(a, np.float32) for a in workload.initial]
  round_seconds, train_loss = [], []
  factors = [workload.client_weight(h) for h in workload.hospitals]
  for r in range(workload.rounds):
    start = time.perf_counter()
    results, loss_sum, seen = [], 0.0, 0
    for h in workload.hospitals:
      x, y = workload.train[h]
      cw, ls, nb = numpy_local(w, x, y, workload.orders[h][r], workload.client_lr,
                               workload.batch_size)
      results.append(cw)
      loss_sum, seen = loss_sum + ls, seen + nb
    w = _server_step(w, results, factors, workload.server_lr)
    round_seconds.append(time.perf_counter() - start)
    train_loss.append(loss_sum / seen)
    if log:
      log(f'round {r + 1:4d}/{workload.rounds}')
  return {'weights': w, 'round_seconds': round_seconds, 'train_loss': train_loss}


# ---------------------------------------------------------------------------
# One TF loop.

def _mlp_step(workload: Workload):
  """(weights, x, y) -> (weights after one SGD step, loss): the MLP's forward pass
  written out in TF ops."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def step(w, xb, yb):
    with tf.GradientTape() as tape:
      tape.watch(w)
      h = xb
      for layer in range(len(w) // 2):
        h = tf.matmul(h, w[2 * layer]) + w[2 * layer + 1]
        if layer < len(w) // 2 - 1:
          h = tf.nn.relu(h)
      loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=h))
    grads = tape.gradient(loss, w)
    return [a - workload.client_lr * g for a, g in zip(w, grads)], loss
  return step


def _keras_step(workload: Workload):
  """(weights, x, y) -> (weights after one SGD step, loss) through a Keras model
  (`cnn_model`) whose variables take the weights."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = cnn_model(workload.test_x.shape[1:])
  variables = model.trainable_variables

  def step(w, xb, yb):
    for variable, value in zip(variables, w):
      variable.assign(value)
    with tf.GradientTape() as tape:
      logits = model(xb, training=True)
      loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits))
    grads = tape.gradient(loss, variables)
    return [a - workload.client_lr * g for a, g in zip(w, grads)], loss
  return step


def run_tf_loop(workload: Workload, log=None) -> dict:
  """FedAvg as one Python loop over TF: per hospital one `tf.function` call
  (its local epochs), the weighted average in TF ops."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  batch_size = workload.batch_size
  specs = [tf.TensorSpec(a.shape, tf.float32) for a in workload.initial]
  step = _keras_step(workload) if workload.model == 'cnn' else _mlp_step(workload)

  @tf.function(input_signature=[specs,
                                tf.TensorSpec([None, *workload.test_x.shape[1:]], tf.float32),
                                tf.TensorSpec([None, 1], tf.float32),
                                tf.TensorSpec([None, None], tf.int64)])
  def local(weights, x, y, order):
    w = list(weights)
    n = tf.shape(order, out_type=tf.int64)[1]
    loss_sum, seen = tf.constant(0.0), tf.constant(0.0)
    for e in tf.range(tf.shape(order)[0]):
      xe, ye = tf.gather(x, order[e]), tf.gather(y, order[e])
      for start in tf.range(tf.constant(0, tf.int64), n, batch_size):
        xb, yb = xe[start:start + batch_size], ye[start:start + batch_size]
        w, loss = step(w, xb, yb)
        size = tf.cast(tf.shape(xb)[0], tf.float32)
        loss_sum, seen = loss_sum + loss * size, seen + size
    return w, loss_sum, seen

  data = {h: (tf.constant(x), tf.constant(y)) for h, (x, y) in workload.train.items()}
  factors = [tf.constant(workload.client_weight(h)) for h in workload.hospitals]
  total = tf.add_n(factors)
  server_lr = tf.constant(workload.server_lr)
  w = [tf.constant(a, tf.float32) for a in workload.initial]
  round_seconds, train_loss = [], []
  for r in range(workload.rounds):
    start = time.perf_counter()
    results, loss_sum, seen = [], 0.0, 0.0
    for h in workload.hospitals:
      cw, ls, nb = local(w, *data[h], tf.constant(workload.orders[h][r]))
      results.append(cw)
      loss_sum, seen = loss_sum + ls, seen + nb
    w = [a - server_lr * tf.add_n([f * (a - cw[k]) for f, cw in zip(factors, results)]) / total
         for k, a in enumerate(w)]
    w = [a.numpy() for a in w]  # The round ends with the model in hand.
    round_seconds.append(time.perf_counter() - start)
    train_loss.append(float(loss_sum / seen))
    if log:
      log(f'round {r + 1:4d}/{workload.rounds}')
  return {'weights': [np.asarray(a) for a in w], 'round_seconds': round_seconds,
          'train_loss': train_loss}


def shuffle_orders(workload: Workload) -> dict:
  """hospital -> int64 [rounds, local_epochs, n]: the record order tf.data's
  `.shuffle(n, seed=shuffle_seed(seed, r)).batch(b).repeat(local_epochs)` gives
  round r, which is what tff_med and `run_tff_direct` feed TFF (a shuffle's
  order depends on its seed and buffer, not on the records). Depends on TF's
  global seed where one was set in this process (as tff_med's shuffles do)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  orders = {}
  for h in workload.hospitals:
    n = len(workload.train[h][1])
    per_round = []
    for r in range(1, workload.rounds + 1):
      batches = list(tf.data.Dataset.range(n)
                     .shuffle(n, seed=shuffle_seed(workload.seed, r))
                     .batch(workload.batch_size).repeat(workload.local_epochs)
                     .as_numpy_iterator())
      per_round.append(np.concatenate(batches).reshape(workload.local_epochs, n))
    orders[h] = np.stack(per_round).astype(np.int64)
  return orders


# ---------------------------------------------------------------------------
# TFF used directly.

def keras_model(hidden, features: int, seed: int = 0):
  """The Keras model tff_med builds for `--model=logreg` (hidden ()) or
  `--model=mlp --hidden_units=...`: same layers, same seeded initial weights."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  init = lambda k: tf.keras.initializers.GlorotUniform(seed=seed * 100 + k)
  inputs = tf.keras.Input(shape=(features,))
  x = inputs
  for k, units in enumerate(hidden, start=3):
    x = tf.keras.layers.Dense(units, activation='relu', kernel_initializer=init(k))(x)
  return tf.keras.Model(inputs, tf.keras.layers.Dense(1, kernel_initializer=init(99))(x))


def cnn_model(image_shape):
  """tff_med's CNN (`tff_med.models.build_keras_model`, name 'cnn', no dropout),
  written again here: pixels [0, 1] -> [-2, 2], three 3x3 ReLU convolutions
  (32, 64, 128 filters) each followed by 2x2 max-pooling, global average
  pooling, one logit. Initial weights come from the workload."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  inputs = tf.keras.Input(shape=tuple(image_shape))
  x = tf.keras.layers.Rescaling(4.0, offset=-2.0)(inputs)
  for filters in (32, 64, 128):
    x = tf.keras.layers.Conv2D(filters, 3, activation='relu', padding='same')(x)
    x = tf.keras.layers.MaxPool2D()(x)
  x = tf.keras.layers.GlobalAveragePooling2D()(x)
  return tf.keras.Model(inputs, tf.keras.layers.Dense(1)(x))


def logits(workload: Workload, weights, x: np.ndarray) -> np.ndarray:
  """The model's logits [m] on x with `weights` (numpy for the MLP, Keras for the CNN)."""
  if workload.model != 'cnn':
    return numpy_logits(weights, x)
  model = cnn_model(x.shape[1:])
  model.set_weights(weights)
  return model.predict(x, batch_size=1024, verbose=0)[:, 0]


def initial_weights(hidden, features: int, seed: int = 0) -> list:
  return [np.asarray(w) for w in keras_model(hidden, features, seed).trainable_weights]


def run_tff_direct(workload: Workload, log=None, set_context: bool = True,
                   model_seed: int = 0) -> dict:
  """FedAvg with TFF's own builder on the local C++ context, fed tf.data
  datasets shuffled per round as tff_med shuffles them. The model carries the
  metrics tff_med's carries (loss, accuracy, AUC), so the difference to tff_med
  is tff_med's own work. `set_context` False: the caller has set a context."""
  import collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import tensorflow_federated as tff

  if set_context:
    tff.backends.native.set_sync_local_cpp_execution_context()
  d = workload.test_x.shape[1]
  element_spec = collections.OrderedDict(x=tf.TensorSpec([None, d], tf.float32),
                                         y=tf.TensorSpec([None, 1], tf.float32))

  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model(workload.hidden, d, model_seed),
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True), input_spec=element_spec,
        metrics=[tf.keras.metrics.BinaryAccuracy(name='accuracy', threshold=0.0),
                 tf.keras.metrics.AUC(name='auc', from_logits=True)])

  weighting = (tff.learning.ClientWeighting.UNIFORM if workload.weighting == 'uniform'
               else tff.learning.ClientWeighting.NUM_EXAMPLES)
  process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(workload.client_lr),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(workload.server_lr),
      client_weighting=weighting)
  base = {h: tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y))
          for h, (x, y) in workload.train.items()}
  state = process.initialize()
  round_seconds, train_loss = [], []
  for r in range(1, workload.rounds + 1):
    start = time.perf_counter()
    datasets = [base[h].shuffle(len(workload.train[h][1]), seed=shuffle_seed(workload.seed, r))
                .batch(workload.batch_size).repeat(workload.local_epochs)
                for h in workload.hospitals]
    output = process.next(state, datasets)
    state = output.state
    round_seconds.append(time.perf_counter() - start)
    train_loss.append(float(output.metrics['client_work']['train']['loss']))
    if log:
      log(f'round {r:4d}/{workload.rounds}')
  weights = [np.asarray(w) for w in process.get_model_weights(state).trainable]
  return {'weights': weights, 'round_seconds': round_seconds, 'train_loss': train_loss}


def _stop_worker_children() -> None:
  """Stops the worker_binary processes TFF's local context started from this
  process (TFF stops them only in a `__del__` that may never run, and a live one
  would keep this process's stdout open)."""
  import signal  # pylint: disable=g-import-not-at-top
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except OSError:
      continue
    name = stat[stat.index('(') + 1:stat.rindex(')')]
    fields = stat[stat.rindex(')') + 2:].split()
    if name == 'worker_binary' and int(fields[1]) == os.getpid() and fields[0] != 'Z':
      try:
        os.kill(int(entry), signal.SIGTERM)
      except ProcessLookupError:
        pass


RUNNERS = {'tff_direct': run_tff_direct, 'tf_loop': run_tf_loop, 'numpy': run_numpy}


def run(impl: str, workload: Workload, log=None) -> dict:
  """Runs implementation `impl` (one of IMPLEMENTATIONS) on `workload`."""
  if impl not in RUNNERS:
    raise ValueError(f'impl={impl!r}: choose one of {IMPLEMENTATIONS}')
  if impl != 'tff_direct' and workload.orders is None:
    raise ValueError(f'impl={impl}: the workload carries no record orders (shuffle_orders)')
  if workload.model == 'cnn' and impl != 'tf_loop':
    raise ValueError(f'impl={impl}: the CNN workload runs in the TF loop only')
  return RUNNERS[impl](workload, log=log)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--impl', required=True, choices=IMPLEMENTATIONS)
  parser.add_argument('--input', required=True, help='Workload .npz (Workload.save).')
  parser.add_argument('--output', required=True, help='Result .json; weights go to .npz '
                      'beside it.')
  args = parser.parse_args(argv)
  workload = Workload.load(args.input)
  try:
    result = run(args.impl, workload, log=lambda line: print(line, flush=True))
  finally:
    if args.impl == 'tff_direct':
      _stop_worker_children()
  np.savez(os.path.splitext(args.output)[0] + '.npz',
           **{f'w{k}': w for k, w in enumerate(result['weights'])})
  with open(args.output, 'w') as f:
    json.dump({'impl': args.impl, 'workload': workload.name,
               'round_seconds': result['round_seconds'], 'train_loss': result['train_loss']},
              f)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  main(sys.argv[1:])
