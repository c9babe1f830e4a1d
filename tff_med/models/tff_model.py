"""Wraps a Keras model for `tff.learning`: binary cross-entropy on logits, with
accuracy and ROC-AUC metrics (AUC summed across hospitals as confusion counts)."""

from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff


def loss() -> tf.keras.losses.Loss:
  return tf.keras.losses.BinaryCrossentropy(from_logits=True)


def metrics() -> list[tf.keras.metrics.Metric]:
  return [tf.keras.metrics.BinaryAccuracy(name='accuracy', threshold=0.0),
          tf.keras.metrics.AUC(name='auc', from_logits=True)]


def tff_model_fn(keras_model_fn: Callable[[], tf.keras.Model],
                 element_spec) -> Callable[[], tff.learning.models.VariableModel]:
  """`model_fn` for tff.learning builders.

  Args:
    keras_model_fn: no-arg function building a fresh uncompiled Keras model
      (must construct new variables on each call, as TFF requires).
    element_spec: batched element spec `OrderedDict(x=..., y=...)` of client data.
  """
  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model_fn(), loss=loss(), input_spec=element_spec, metrics=metrics())
  return model_fn
