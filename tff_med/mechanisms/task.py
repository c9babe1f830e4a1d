"""What every mechanism of a run shares: the data, the model, the settings, and
the hospitals' ordinary training datasets."""

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models.tff_model import tff_model_fn

KerasModelFn = Callable[[], tf.keras.Model]


def client_dataset(data: FederatedData, hospital: str, config: TrainConfig,
                   shuffle_seed: int) -> tf.data.Dataset:
  """A hospital's training records for one round: `local_epochs` passes, each
  reshuffled and cut into batches of `batch_size` (the last one may be smaller)."""
  return (data.train.create_tf_dataset_for_client(hospital)
          .shuffle(data.num_train(hospital), seed=shuffle_seed)
          .batch(config.batch_size)
          .repeat(config.local_epochs))


class Task:
  """`data`, `keras_model_fn` (no-arg, fresh uncompiled Keras model with one
  logit, [B, 1], same initial weights on every call), `config`, and `model_fn`
  for `tff.learning` builders."""

  def __init__(self, data: FederatedData, keras_model_fn: KerasModelFn, config: TrainConfig):
    self.data, self.keras_model_fn, self.config = data, keras_model_fn, config
    self.model_fn = tff_model_fn(keras_model_fn,
                                 self.dataset(data.hospitals[0], 0).element_spec)

  def dataset(self, hospital: str, round_num: int) -> tf.data.Dataset:
    """`client_dataset`, shuffled by the seed and the round (a resumed run sees
    the same batches)."""
    return client_dataset(self.data, hospital, self.config,
                          shuffle_seed=self.config.seed * 100003 + round_num)

  def sample(self, hospitals, rng: np.random.Generator) -> list[str]:
    """`clients_per_round` hospitals uniformly without replacement from `rng`
    (all when 0)."""
    k = self.config.clients_per_round
    if 0 < k < len(hospitals):
      return sorted(rng.choice(list(hospitals), k, replace=False).tolist())
    return list(hospitals)
