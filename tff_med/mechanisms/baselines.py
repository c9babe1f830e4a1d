"""The two baselines as round plans, on the same model and budget as the
federated algorithms: `local` trains one model per hospital on its own records,
`pooled` one model on all hospitals' records (what privacy law forbids). Each
round is `local_epochs` epochs of Keras SGD at `algorithm.client_lr`,
shuffled by the seed and the round. State: each model's weights."""

import numpy as np
import tensorflow as tf

from tff_med.audit_log import keras_weights_sha256
from tff_med.evaluation import evaluate, mean_over_hospitals
from tff_med.mechanisms.round_plan import Round, RoundPlan, RoundResult
from tff_med.mechanisms.task import Task
from tff_med.models.tff_model import loss as model_loss
from tff_med.privacy.dp_account import no_dp


class BaselinePlan(RoundPlan):
  """`pooled` False: `local`. Every hospital takes part in every round."""

  def __init__(self, task: Task, pooled: bool):
    self.task, self._pooled = task, pooled
    data = task.data
    self._train = ({'pooled': data.pooled('train')} if pooled
                   else {h: data.train_arrays(h) for h in data.hospitals})
    self._models = {}
    for name in self._train:
      self._models[name] = task.keras_model_fn()
      self._models[name].compile(
          optimizer=tf.keras.optimizers.SGD(task.config.algorithm.client_lr),
          loss=model_loss())

  def initialize(self):
    tf.keras.utils.set_random_seed(self.task.config.seed)
    return {name: model.get_weights() for name, model in self._models.items()}

  def cohort(self, hospitals, rng):
    del rng
    return list(hospitals)

  def run_round(self, state, round_: Round) -> RoundResult:
    config, losses = self.task.config, []
    for name, (x, y) in self._train.items():
      model = self._models[name]
      model.set_weights(list(state[name]))
      dataset = (tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)[:, None]))
                 .shuffle(len(y), seed=config.seed * 100003 + round_.number)
                 .batch(config.batch_size))
      losses.append(model.fit(dataset, epochs=config.local_epochs,
                              verbose=0).history['loss'][-1])
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
