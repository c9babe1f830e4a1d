"""Record-level DP: DP-SGD inside each hospital, as a TFF client work process.

Each local step Poisson-samples the hospital's training records (each record
joins with probability q = batch_size / n, n = the hospital's training rows),
computes per-example gradients with `tf.vectorized_map`, clips each to L2 norm
`l2_norm_clip` and adds Gaussian noise of std `noise_multiplier * l2_norm_clip`
to their sum through TF Privacy's `GaussianSumQuery`, divides by the expected
batch size q * n, and takes an SGD step. One round is
`local_steps(n, batch_size, local_epochs)` such steps, so the hospital's DP
event per round is SelfComposed(PoissonSampled(q, Gaussian(noise_multiplier)),
steps): exactly what `tff_med.privacy.accounting.dp_sgd_event` accounts.

TFF's client works (`tff.learning.templates.build_model_delta_client_work`)
take batch gradients from a `tff.learning.optimizers.Optimizer`, with no hook
for per-example clipping, so this client work is written here; it is composed
with TFF's own broadcast, aggregator and optimizer finalizer.

Hospital sizes n are treated as public, as DP-SGD's sampling rate already is.
Noise and sampling draw fresh OS-seeded randomness on every execution.
"""

import collections
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp


def local_steps(num_records: int, batch_size: int, local_epochs: int) -> int:
  """Noisy steps a hospital takes per round: local_epochs * ceil(n / batch_size)."""
  return local_epochs * math.ceil(num_records / batch_size)


def sampling_rate(num_records: int, batch_size: int) -> float:
  """Poisson sampling probability of one record per step, min(1, batch_size / n)."""
  return min(1.0, batch_size / num_records)


def clipped_example_gradients(model, loss_fn, query, params, x, y) -> list[tf.Tensor]:
  """Per-example gradients of `loss_fn` w.r.t. the model's trainable variables,
  each clipped by `query` (to global L2 norm <= its clip): [b, *variable.shape] each."""
  variables = model.trainable_variables

  def example_gradient(example):
    x, y = example
    with tf.GradientTape() as tape:
      loss = loss_fn(y[None], model.predict_on_batch(x[None], training=True))
    return tape.gradient(loss, variables)

  gradients = tf.vectorized_map(example_gradient, (x, y))
  return tf.vectorized_map(lambda g: query.preprocess_record(params, g), gradients)


def _dp_sgd_update(model, loss_fn, query, learning_rate, batch_size, local_epochs):
  """tf.function: (initial ModelWeights, x_all [n, ...], y_all [n, 1]) -> (trained
  trainable weights, steps). Everything that touches the variables happens
  inside it, so that graph-mode execution keeps assign -> train -> read in order."""
  variables = model.trainable_variables

  @tf.function
  def train(initial_weights, x_all, y_all):
    tf.nest.map_structure(lambda v, t: v.assign(t),
                          tff.learning.models.ModelWeights.from_model(model), initial_weights)
    n = tf.shape(y_all)[0]
    n_float = tf.cast(n, tf.float32)
    q = tf.minimum(1.0, batch_size / n_float)
    steps = local_epochs * tf.cast(tf.math.ceil(n_float / batch_size), tf.int32)
    global_state = query.initial_global_state()
    params = query.derive_sample_params(global_state)
    for _ in tf.range(steps):
      chosen = tf.where(tf.random.uniform([n]) < q)[:, 0]
      clipped = clipped_example_gradients(model, loss_fn, query, params,
                                          tf.gather(x_all, chosen), tf.gather(y_all, chosen))
      summed = [tf.reduce_sum(g, axis=0) for g in clipped]
      noised, _, _ = query.get_noised_result(summed, global_state)
      for variable, gradient in zip(variables, noised):
        variable.assign_sub(learning_rate * gradient / (q * n_float))
    # Inside the tf.function, so that these reads follow the training steps.
    return [tf.identity(v) for v in variables], steps

  return train


def build_dp_sgd_client_work(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    loss_fn: Callable[[], tf.keras.losses.Loss],
    learning_rate: float, l2_norm_clip: float, noise_multiplier: float,
    batch_size: int, local_epochs: int, client_weighting: tff.learning.ClientWeighting,
) -> tff.learning.templates.ClientWorkProcess:
  """DP-SGD client work. A hospital's data must arrive as ONE batch holding all
  its training records (`dataset.batch(n)`): DP-SGD samples from them itself.

  Measurements: `noisy_steps` (DP-SGD steps summed over the round's hospitals,
  a function of the public hospital sizes) and nothing else: no training
  statistic of the records reaches the server.
  """
  if not l2_norm_clip > 0:
    raise ValueError(f'privacy.l2_norm_clip={l2_norm_clip}: must be positive')
  if not noise_multiplier >= 0:
    raise ValueError(f'privacy.noise_multiplier={noise_multiplier}: must be non-negative')
  with tf.Graph().as_default():
    model = model_fn()
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))
  weights_type = tff.learning.models.weights_type_from_model(model)

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(initial_weights, dataset):
    model = model_fn()
    query = tfp.GaussianSumQuery(l2_norm_clip, noise_multiplier * l2_norm_clip)
    batch = dataset.get_single_element()
    trained, steps = _dp_sgd_update(model, loss_fn(), query, learning_rate,
                                             batch_size, local_epochs)(
                                                 initial_weights, batch['x'], batch['y'])
    # TFF's convention: the update is initial minus trained weights.
    update = tf.nest.map_structure(tf.subtract, tuple(initial_weights.trainable),
                                   tuple(trained))
    num_records = tf.cast(tf.shape(batch['y'])[0], tf.float32)
    weight = (num_records if client_weighting == tff.learning.ClientWeighting.NUM_EXAMPLES
              else tf.constant(1.0))
    return tff.learning.templates.ClientResult(update=update, update_weight=weight), steps

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, data):
    result, steps = tff.federated_map(client_update, (weights, data))
    measurements = tff.federated_zip(collections.OrderedDict(
        noisy_steps=tff.federated_sum(steps)))
    return tff.templates.MeasuredProcessOutput(state, result, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def build_dp_sgd_learning_process(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_work: tff.learning.templates.ClientWorkProcess,
    server_optimizer: tff.learning.optimizers.Optimizer,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
) -> tff.learning.templates.LearningProcess:
  """TFF's broadcast + `client_work` + weighted aggregator + server optimizer."""
  with tf.Graph().as_default():
    weights_type = tff.learning.models.weights_type_from_model(model_fn())

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  aggregator = (model_aggregator or tff.aggregators.MeanFactory()).create(
      weights_type.trainable, tff.TensorType(np.float32))
  return tff.learning.templates.compose_learning_process(
      initial_model_weights_fn,
      tff.learning.templates.build_broadcast_process(weights_type),
      client_work, aggregator,
      tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type))
