"""What every mechanism of a run shares: the data, the model, the settings, and
the hospitals' ordinary training datasets."""

import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models.keras_models import build_keras_model
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


def model_key(keras_model_fn: KerasModelFn, element_spec) -> tuple | None:
  """What TFF computations traced from `keras_model_fn` on data of `element_spec`
  depend on, where that is known: for `functools.partial(build_keras_model,
  config, feature_shape, seed)` without dropout, the architecture and the
  element spec, not the seed (which only sets initial weights). None for any
  other function, and for a model with dropout (its random state lives in the
  traced graph).
  """
  if not (isinstance(keras_model_fn, functools.partial)
          and keras_model_fn.func is build_keras_model and not keras_model_fn.keywords
          and len(keras_model_fn.args) == 3):
    return None
  config, feature_shape, _ = keras_model_fn.args
  if config.dropout:
    return None
  return (config.name, tuple(config.hidden_units), tuple(feature_shape),
          tuple(element_spec.items()))


class Task:
  """`data`, `keras_model_fn` (no-arg, fresh uncompiled Keras model with one
  logit, [B, 1], same initial weights on every call), `config`, `model_fn` for
  `tff.learning` builders and its `model_key` (`model_key`)."""

  def __init__(self, data: FederatedData, keras_model_fn: KerasModelFn, config: TrainConfig):
    self.data, self.keras_model_fn, self.config = data, keras_model_fn, config
    element_spec = self.dataset(data.hospitals[0], 0).element_spec
    self.model_fn = tff_model_fn(keras_model_fn, element_spec)
    self.model_key = model_key(keras_model_fn, element_spec)

  def initial_weights(self) -> tff.learning.models.ModelWeights:
    """The model's initial weights, as numpy arrays."""
    model = self.keras_model_fn()
    return tff.learning.models.ModelWeights(
        trainable=[w.numpy() for w in model.trainable_weights],
        non_trainable=[w.numpy() for w in model.non_trainable_weights])

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
