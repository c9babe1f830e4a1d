"""Quantised secure summation with TFF's secure-sum intrinsic (`--secure_agg=tff`).

Each hospital clips every value of its update to [-clip, clip] and maps it
affinely onto the integers 0..levels, levels = (2^bits - 1) // num_clients, so
that the sum of num_clients hospitals never wraps modulo 2^bits. The integers
go through `tff.aggregators.SecureSumFactory` (integer mode:
`tff.federated_secure_sum_bitwidth`), and the server maps the integer sum back.
Resolution: 2 * clip / levels per value. TFF's simulation runs the secure sum
as a plain sum (test execution context): this measures what quantisation costs;
`masking.py` is the protocol that hides each update.

`quantize` and `dequantize_sum` are the one quantiser of the project: the
masking protocol uses them too, so both paths sum the same integers.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


def levels(bits: int, num_clients: int) -> int:
  """Integer levels per hospital: (2^bits - 1) // num_clients (at least 1)."""
  if not 2 <= bits <= 32:
    raise ValueError(f'--secagg_bits={bits}: must be between 2 and 32')
  result = (2**bits - 1) // num_clients
  if result < 1:
    raise ValueError(f'--secagg_bits={bits} leaves no integer level for each of '
                     f'{num_clients} hospitals; raise --secagg_bits')
  return result


def quantize(value, clip: float, num_levels: int) -> tf.Tensor:
  """float tensor -> int64 in [0, num_levels]: round((clip(v) + clip) / (2 clip) * levels)."""
  value = tf.clip_by_value(tf.cast(value, tf.float64), -clip, clip)
  return tf.cast(tf.round((value + clip) / (2 * clip) * num_levels), tf.int64)


def dequantize_sum(total, count, clip: float, num_levels: int) -> tf.Tensor:
  """Sum of `count` hospitals' quantised values -> the float sum (float32)."""
  total = tf.cast(total, tf.float64)
  return tf.cast(total / num_levels * 2 * clip - tf.cast(count, tf.float64) * clip, tf.float32)


class QuantizedSecureSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums float updates through TFF's integer secure sum after quantisation.

  Measurements: SecureSumFactory's, plus `clients` (hospitals summed).
  """

  def __init__(self, bits: int, clip: float, num_clients: int):
    if not clip > 0:
      raise ValueError(f'--secagg_clip={clip}: must be positive')
    self._clip = clip
    self._levels = levels(bits, num_clients)

  def create(self, value_type) -> tff.templates.AggregationProcess:
    clip, num_levels = self._clip, self._levels

    @tff.tensorflow.computation(value_type)
    def quantize_update(value):
      return tf.nest.map_structure(lambda v: quantize(v, clip, num_levels), value)

    int_type = quantize_update.type_signature.result
    inner = tff.aggregators.SecureSumFactory(
        upper_bound_threshold=num_levels, lower_bound_threshold=0).create(int_type)

    @tff.tensorflow.computation(int_type, np.int32)
    def dequantize(total, count):
      return tf.nest.map_structure(lambda t: dequantize_sum(t, count, clip, num_levels), total)

    @tff.federated_computation
    def init_fn():
      return inner.initialize()

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      output = inner.next(state, tff.federated_map(quantize_update, value))
      count = tff.federated_sum(tff.federated_value(1, tff.CLIENTS))
      measurements = tff.federated_zip(
          {'secure_sum': output.measurements, 'clients': count})
      return tff.templates.MeasuredProcessOutput(
          output.state, tff.federated_map(dequantize, (output.result, count)), measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)
