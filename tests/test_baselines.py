"""The baselines' compiled epochs against Keras `model.fit` on the same batches."""

import functools

import numpy as np
import tensorflow as tf

from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms.baselines import BaselinePlan, epoch_order
from tff_med.mechanisms.round_plan import Round
from tff_med.mechanisms.task import Task
from tff_med.models import ModelConfig, build_keras_model


def _task():
  rng = np.random.default_rng(4)
  arrays = {h: (rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 2, n))
            for h, n in (('a', 23), ('b', 10))}
  data = FederatedData.from_arrays('toy', arrays, arrays)
  config = TrainConfig(AlgorithmConfig('local', client_lr=0.2), rounds=2, batch_size=4,
                       local_epochs=3, seed=5)
  return Task(data, functools.partial(build_keras_model, ModelConfig('mlp', (8,)), (5,), 5),
              config)


def _fit_reference(task, pooled):
  """Keras fit, one call per epoch on the records in that epoch's order: weights and
  the mean over models of the last epoch's loss, per round."""
  config, data = task.config, task.data
  train = ({'pooled': data.pooled('train')} if pooled
           else {h: data.train_arrays(h) for h in data.hospitals})
  models = {}
  for name in train:
    models[name] = task.keras_model_fn()
    models[name].compile(optimizer=tf.keras.optimizers.SGD(config.algorithm.client_lr),
                         loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
  losses = []
  for round_num in (1, 2):
    round_losses = []
    for name, (x, y) in train.items():
      for epoch in range(config.local_epochs):
        order = epoch_order(len(y), config.seed, round_num, epoch)
        history = models[name].fit(x[order], y[order].astype(np.float32)[:, None],
                                   batch_size=config.batch_size, shuffle=False, epochs=1,
                                   verbose=0)
      round_losses.append(history.history['loss'][-1])
    losses.append(np.mean(round_losses))
  return {name: model.get_weights() for name, model in models.items()}, losses


def _plan_run(task, pooled):
  plan = BaselinePlan(task, pooled=pooled)
  state, losses = plan.initialize(), []
  hospitals = tuple(task.data.hospitals)
  for round_num in (1, 2):
    result = plan.run_round(state, Round(round_num, hospitals, hospitals))
    state = result.state
    losses.append(result.metrics['train']['loss'])
  return state, losses


def test_local_and_pooled_train_as_keras_fit_does():
  for pooled in (False, True):
    expected_weights, expected_losses = _fit_reference(_task(), pooled)
    state, losses = _plan_run(_task(), pooled)
    assert set(state) == set(expected_weights) == ({'pooled'} if pooled else {'a', 'b'})
    for name, weights in expected_weights.items():
      for got, want in zip(state[name], weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    initial = _task().keras_model_fn().get_weights()
    assert not np.allclose(state[next(iter(state))][0], initial[0])  # It trained.


def test_every_epoch_and_round_has_its_own_order():
  orders = {(r, e): tuple(epoch_order(23, 5, r, e)) for r in (1, 2) for e in (0, 1)}
  assert len(set(orders.values())) == 4
  assert all(sorted(o) == list(range(23)) for o in orders.values())
  assert tuple(epoch_order(23, 5, 1, 0)) == orders[1, 0]  # Resumable: same seed, same order.
  assert tuple(epoch_order(23, 6, 1, 0)) != orders[1, 0]
