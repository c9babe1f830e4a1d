"""Keras models for binary outcomes: each outputs one logit per record, shape [B, 1].

- `logreg`: logistic regression (FLamby's Fed-Heart-Disease baseline).
- `mlp`: dense layers for clinical tables.
- `cnn`: three conv blocks (32, 64, 128 filters) and global average pooling for
  28x28x1 medical images (MedMNIST); 93k parameters.
"""

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

MODELS = ('logreg', 'mlp', 'cnn')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture choice. `hidden_units`: widths of the MLP's hidden layers;
  `dropout`: drop rate after each hidden layer (MLP and CNN), in [0, 1)."""
  name: str = 'logreg'
  hidden_units: Sequence[int] = (64, 32)
  dropout: float = 0.0


# The models that read each ModelConfig field besides `name`; given a value other
# than its default, a field another model would ignore is an error.
READ_BY = {'hidden_units': ('mlp',), 'dropout': ('mlp', 'cnn')}


def build_keras_model(config: ModelConfig, feature_shape: Sequence[int],
                      seed: int = 0) -> tf.keras.Model:
  """A fresh, uncompiled Keras model with deterministic initial weights."""
  if config.name not in MODELS:
    raise ValueError(f'--model={config.name!r}: choose one of {MODELS}')
  if not 0.0 <= config.dropout < 1.0:
    raise ValueError(f'--dropout={config.dropout}: must be in [0, 1)')
  for field, models in READ_BY.items():
    value = getattr(config, field)
    if isinstance(value, list):  # summary.json records the tuple as a list.
      value = tuple(value)
    if config.name not in models and value != getattr(ModelConfig, field):
      value = ','.join(map(str, value)) if isinstance(value, tuple) else value
      raise ValueError(f'--{field}={value} applies to '
                       f'{" and ".join("--model=" + m for m in models)} only, not '
                       f'--model={config.name}: it would be ignored; leave it out')
  init = lambda k: tf.keras.initializers.GlorotUniform(seed=seed * 100 + k)
  inputs = tf.keras.Input(shape=tuple(feature_shape))
  x = inputs
  if config.name == 'cnn':
    if tuple(feature_shape)[-1:] != (1,) or len(feature_shape) != 3:
      raise ValueError(f'--model=cnn needs images of shape (H, W, 1), got {tuple(feature_shape)}')
    x = tf.keras.layers.Rescaling(4.0, offset=-2.0)(x)  # Pixels [0, 1] -> [-2, 2].
    for k, filters in enumerate((32, 64, 128)):
      x = tf.keras.layers.Conv2D(filters, 3, activation='relu', padding='same',
                                 kernel_initializer=init(k))(x)
      x = tf.keras.layers.MaxPool2D()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    if config.dropout:
      x = tf.keras.layers.Dropout(config.dropout, seed=seed)(x)
    hidden = ()
  else:
    if len(feature_shape) != 1:
      x = tf.keras.layers.Flatten()(x)
    hidden = tuple(config.hidden_units) if config.name == 'mlp' else ()
  for k, units in enumerate(hidden, start=3):
    x = tf.keras.layers.Dense(units, activation='relu', kernel_initializer=init(k))(x)
    if config.dropout:
      x = tf.keras.layers.Dropout(config.dropout, seed=seed)(x)
  logits = tf.keras.layers.Dense(1, kernel_initializer=init(99))(x)
  return tf.keras.Model(inputs, logits, name=config.name)
