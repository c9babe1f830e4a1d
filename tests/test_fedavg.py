"""One FedAvg round from tff.learning against an independent numpy computation."""

import numpy as np

from tff_med import runtime
from tff_med.algorithms import AlgorithmConfig, build_learning_process
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model, tff_model_fn
from tff_med.config import TrainConfig
from tff_med.mechanisms.task import client_dataset


def _numpy_local_training(w, b, x, y, lr, steps):
  """Full-batch gradient descent on the mean logistic loss; returns (w, b)."""
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    w = w - lr * x.T @ (p - y) / len(y)
    b = b - lr * np.mean(p - y)
  return w, b


def test_fedavg_round_is_example_weighted_mean_of_client_deltas():
  rng = np.random.default_rng(7)
  sizes = {'a': 7, 'b': 12, 'c': 30}
  arrays = {h: (rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n))
            for h, n in sizes.items()}
  data = FederatedData.from_arrays('toy', arrays, arrays)
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.5, server_lr=1.0),
                       local_epochs=3, batch_size=64)  # One full batch per epoch.
  keras_fn = lambda: build_keras_model(ModelConfig('logreg'), (4,), seed=3)
  initial = keras_fn().get_weights()
  w0, b0 = initial[0][:, 0].astype(np.float64), float(initial[1][0])

  with runtime.execution_context():
    process = build_learning_process(
        config.algorithm,
        tff_model_fn(keras_fn, client_dataset(data, 'a', config, 0).element_spec))
    state = process.initialize()
    state = process.next(state, [client_dataset(data, h, config, 1) for h in sizes]).state
    weights = process.get_model_weights(state).trainable

  deltas, counts = [], []
  for h, (x, y) in arrays.items():
    w, b = _numpy_local_training(w0, b0, x.astype(np.float64), y, 0.5, steps=3)
    deltas.append(np.append(w - w0, b - b0))
    counts.append(len(y))
  expected = np.append(w0, b0) + np.average(deltas, axis=0, weights=counts)
  got = np.append(np.asarray(weights[0])[:, 0], np.asarray(weights[1]))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  # The unweighted mean differs: the test can tell the two apart.
  unweighted = np.append(w0, b0) + np.mean(deltas, axis=0)
  assert np.abs(unweighted - expected).max() > 1e-3
