"""The two baselines as round plans, on the same model and budget as the
federated algorithms: `local` trains one model per hospital on its own records,
`pooled` one model on all hospitals' records (what privacy law forbids). Each
round is `local_epochs` epochs of SGD at `algorithm.client_lr`, each in an order
drawn from the seed, the round and the epoch. State: each model's weights."""

import numpy as np
import tensorflow as tf

from tff_med.audit_log import keras_weights_sha256
from tff_med.evaluation import evaluate, mean_over_hospitals
from tff_med.mechanisms.round_plan import Round, RoundPlan, RoundResult
from tff_med.mechanisms.task import Task
from tff_med.models.tff_model import loss as model_loss
from tff_med.privacy.dp_account import no_dp


def epoch_function(model: tf.keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int,
                   learning_rate: float):
  """`epoch(order) -> loss`: one epoch of SGD on `model` over records x [N, ...],
  y [N] taken in `order` (int32 [N]) in batches of `batch_size` (the last may be
  smaller), as `model.fit(x[order], y[order], shuffle=False)` runs it (forward
  pass in training mode, mean binary cross-entropy on logits, one SGD step per
  batch), traced once instead of paying fit's set-up (~70 ms) at every call. The
  loss is the epoch's batch losses averaged with batch sizes as weights, as fit's
  history reports it."""
  optimizer = tf.keras.optimizers.SGD(learning_rate)
  loss_fn = model_loss()
  x, y = tf.constant(x), tf.constant(y.astype(np.float32)[:, None])

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
  def epoch(order):
    total, count = tf.constant(0.0), tf.constant(0.0)
    for start in tf.range(0, tf.shape(order)[0], batch_size):
      batch = order[start:start + batch_size]
      with tf.GradientTape() as tape:
        loss = loss_fn(tf.gather(y, batch), model(tf.gather(x, batch), training=True))
      gradients = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(gradients, model.trainable_variables))
      size = tf.cast(tf.shape(batch)[0], tf.float32)
      total, count = total + loss * size, count + size
    return total / count
  return epoch


def epoch_order(num_records: int, seed: int, round_num: int, epoch: int) -> np.ndarray:
  """The record order of one epoch: a permutation seeded by the run's seed, the
  round and the epoch (a resumed run sees the same batches)."""
  return np.random.default_rng((seed, round_num, epoch)).permutation(num_records).astype(
      np.int32)


class BaselinePlan(RoundPlan):
  """`pooled` False: `local`. Every hospital takes part in every round."""

  def __init__(self, task: Task, pooled: bool):
    self.task, self._pooled = task, pooled
    data = task.data
    self._train = ({'pooled': data.pooled('train')} if pooled
                   else {h: data.train_arrays(h) for h in data.hospitals})
    self._models = {name: task.keras_model_fn() for name in self._train}
    self._epochs = {name: epoch_function(self._models[name], x, y, task.config.batch_size,
                                         task.config.algorithm.client_lr)
                    for name, (x, y) in self._train.items()}

  def initialize(self):
    tf.keras.utils.set_random_seed(self.task.config.seed)
    return {name: model.get_weights() for name, model in self._models.items()}

  def cohort(self, hospitals, rng):
    del rng
    return list(hospitals)

  def run_round(self, state, round_: Round) -> RoundResult:
    config, losses = self.task.config, []
    for name, (_, y) in self._train.items():
      self._models[name].set_weights(list(state[name]))
      for epoch in range(config.local_epochs):
        loss = self._epochs[name](epoch_order(len(y), config.seed, round_.number, epoch))
      losses.append(float(loss))
    state = {name: model.get_weights() for name, model in self._models.items()}
    return RoundResult(state, {'train': {'loss': float(np.mean(losses))}},
                       trained=round_.cohort)

  def models(self, state):
    for name, model in self._models.items():
      model.set_weights(list(state[name]))
    return dict(self._models)

  def model_hashes(self, state) -> dict[str, str]:
    return {name: keras_weights_sha256(model) for name, model in self.models(state).items()}

  def summary(self) -> dict:
    updates = ('none leave a hospital: it is a baseline, all records pooled in one place'
               if self._pooled else 'none leave a hospital: each trains alone')
    return {'privacy': no_dp(self.task.data, updates)}

  def evaluate(self, state) -> dict:
    """`pooled`: the model on every test set. `local`: per_hospital holds each
    hospital's own model on its own test set; mean_hospital their mean; pooled
    the mean over hospitals' models of their pooled-test metrics;
    `local_models` each model on every test set."""
    models, data = self.models(state), self.task.data
    if 'pooled' in models:
      return evaluate(models['pooled'], data)
    local = {h: evaluate(models[h], data) for h in data.hospitals}
    per_hospital = {h: local[h]['per_hospital'][h] for h in data.hospitals}
    return {
        'per_hospital': per_hospital,
        'mean_hospital': mean_over_hospitals(per_hospital),
        'pooled': {k: float(np.nanmean([local[h]['pooled'][k] for h in data.hospitals]))
                   for k in ('accuracy', 'auc')},
        'local_models': local,
    }
