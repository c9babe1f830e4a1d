"""DP-SGD inside a hospital: per-example clipping, noise, and equivalence with SGD."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tff_med import runtime
from tff_med.algorithms import AlgorithmConfig, build_learning_process
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model, loss, tff_model_fn
from tff_med.privacy import dp_sgd
from tff_med.config import TrainConfig
from tff_med.mechanisms.task import client_dataset

_FEATURES = 4


def _keras_model():
  return build_keras_model(ModelConfig('logreg'), (_FEATURES,), seed=3)


def _toy_data(sizes=(9, 14, 20)):
  rng = np.random.default_rng(11)
  arrays = {f'h{k}': (rng.normal(size=(n, _FEATURES)).astype(np.float32) * 3,
                      rng.integers(0, 2, n)) for k, n in enumerate(sizes)}
  return FederatedData.from_arrays('toy', arrays, arrays)


def _clipped(clip, x, y):
  data = _toy_data()
  spec = client_dataset(data, 'h0', TrainConfig(), 0).element_spec
  model = tff_model_fn(_keras_model, spec)()
  query = tfp.GaussianSumQuery(clip, 0.0)
  params = query.derive_sample_params(query.initial_global_state())
  gradients = dp_sgd.clipped_example_gradients(model, loss(), query, params,
                                               tf.constant(x), tf.constant(y[:, None]))
  weights = _keras_model().get_weights()
  return [g.numpy() for g in gradients], weights


def _numpy_example_gradients(weights, x, y):
  """Logistic loss gradient per example: (sigmoid(x.w + b) - y) * [x, 1]."""
  w, b = weights[0][:, 0], weights[1][0]
  residual = 1 / (1 + np.exp(-(x @ w + b))) - y
  return residual[:, None] * x, residual


def test_every_clipped_example_gradient_is_within_the_clip():
  x, y = _toy_data().train_arrays('h2')
  (kernel, bias), weights = _clipped(0.05, x, y.astype(np.float32))
  norms = np.sqrt((kernel ** 2).sum(axis=(1, 2)) + (bias ** 2).sum(axis=1))
  assert len(norms) == len(y)
  assert norms.max() <= 0.05 * (1 + 1e-5)
  # Each is its raw gradient scaled to norm min(raw norm, clip): most were clipped.
  raw_kernel, raw_bias = _numpy_example_gradients(weights, x.astype(np.float64), y)
  raw_norms = np.sqrt((raw_kernel ** 2).sum(axis=1) + raw_bias ** 2)
  np.testing.assert_allclose(norms, np.minimum(raw_norms, 0.05), rtol=1e-4, atol=1e-6)
  assert (raw_norms > 0.05).sum() >= len(y) // 2


def test_a_clip_that_does_not_bind_leaves_per_example_gradients_exact():
  x, y = _toy_data().train_arrays('h2')
  (kernel, bias), weights = _clipped(1e6, x, y.astype(np.float32))
  want_kernel, want_bias = _numpy_example_gradients(weights, x.astype(np.float64), y)
  np.testing.assert_allclose(kernel[:, :, 0], want_kernel, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bias[:, 0], want_bias, rtol=1e-4, atol=1e-6)


def _run_rounds(process, datasets, rounds):
  state = process.initialize()
  for _ in range(rounds):
    output = process.next(state, datasets)
    state = output.state
  return process.get_model_weights(state).trainable, output.metrics


def _dp_process(data, noise_multiplier, clip, batch_size):
  config = TrainConfig(batch_size=batch_size)
  model_fn = tff_model_fn(_keras_model, client_dataset(data, 'h0', config, 0).element_spec)
  client_work = dp_sgd.build_dp_sgd_client_work(
      model_fn, loss, 0.3, clip, noise_multiplier, batch_size, 2,
      tff.learning.ClientWeighting.NUM_EXAMPLES)
  return dp_sgd.build_dp_sgd_learning_process(
      model_fn, client_work, tff.learning.optimizers.build_sgdm(1.0))


def _all_records(data):
  return [data.train.create_tf_dataset_for_client(h).batch(1000) for h in data.hospitals]


def test_no_noise_and_a_loose_clip_equal_non_private_fedavg_over_rounds():
  # batch_size >= every hospital's rows: q = 1, each step uses all records, the
  # same batches as non-private full-batch SGD. Three rounds: the second and
  # third must start from the new global model.
  data = _toy_data()
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.3, server_lr=1.0),
                       local_epochs=2, batch_size=64)
  with runtime.execution_context():
    dp_weights, metrics = _run_rounds(_dp_process(data, 0.0, 1e6, 64), _all_records(data), 3)
    plain = build_learning_process(
        config.algorithm, tff_model_fn(_keras_model, client_dataset(data, 'h0', config, 0)
                                       .element_spec))
    plain_weights, _ = _run_rounds(
        plain, [client_dataset(data, h, config, 0) for h in data.hospitals], 3)
  for got, want in zip(dp_weights, plain_weights):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert metrics['client_work']['noisy_steps'] == 3 * 2  # 3 hospitals x 2 epochs x 1 step.
  assert np.abs(np.asarray(dp_weights[0]) - _keras_model().get_weights()[0]).max() > 1e-2


def test_noise_is_fresh_on_every_execution():
  data = _toy_data()
  with runtime.execution_context():
    process = _dp_process(data, 1.0, 1.0, 4)
    state = process.initialize()
    first = process.get_model_weights(process.next(state, _all_records(data)).state)
    again = process.get_model_weights(process.next(state, _all_records(data)).state)
  assert np.abs(np.asarray(first.trainable[0]) - np.asarray(again.trainable[0])).max() > 1e-3


def test_local_steps_and_sampling_rate():
  assert dp_sgd.local_steps(199, 4, 1) == 50
  assert dp_sgd.local_steps(30, 4, 2) == 16
  assert dp_sgd.sampling_rate(199, 4) == 4 / 199
  assert dp_sgd.sampling_rate(30, 64) == 1.0
