"""Quantised secure summation with TFF's secure-sum intrinsic (`secure_agg.mode=tff`).

Each hospital clips every value of its update to [-clip, clip] and maps it
affinely onto the integers 0..levels, levels = (2^bits - 1) // num_clients, so
that the sum of num_clients hospitals never wraps modulo 2^bits. The integers
go through `tff.aggregators.SecureSumFactory` (integer mode:
`tff.federated_secure_sum_bitwidth`), and the server maps the integer sum back.
Resolution: 2 * clip / levels per value. TFF's simulation runs the secure sum
as a plain sum (test execution context): this measures what quantisation costs;
`masking.py` is the protocol that hides each update.

`Quantizer` is the one quantiser of the project: the masking protocol uses it
too, so both paths sum the same integers.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """Affine map of [-clip, clip] onto the integers 0..levels, levels =
  (2^bits - 1 - 2 headroom) // num_clients, so a sum of up to `num_clients`
  quantised values, moved by less than `headroom` (integers; distributed DP
  noise, `ddp.py`), stays in [-headroom, 2^bits - 1 - headroom] and decodes
  without wrapping modulo 2^bits. Resolution: 2 clip / levels float units per
  step; rounding costs at most half a step per value. TensorFlow ops: usable
  inside TFF computations and eagerly on numpy arrays."""
  bits: int
  clip: float
  num_clients: int
  headroom: int = 0

  def __post_init__(self):
    if not 2 <= self.bits <= 32:
      raise ValueError(f'secure_agg.bits={self.bits}: must be between 2 and 32')
    if not self.clip > 0:
      raise ValueError(f'secure_agg.clip={self.clip}: must be positive')
    if self.levels < 1:
      raise ValueError(f'secure_agg.bits={self.bits} leaves no integer level for each of '
                       f'{self.num_clients} hospitals' + (
                           f' beside {self.headroom} for noise' if self.headroom else '')
                       + '; raise secure_agg.bits')

  @property
  def levels(self) -> int:
    return (2**self.bits - 1 - 2 * self.headroom) // self.num_clients

  @property
  def scale(self) -> float:
    """Integers per float unit: levels / (2 clip)."""
    return self.levels / (2 * self.clip)

  @property
  def resolution(self) -> float:
    return 2 * self.clip / self.levels

  def quantize(self, values) -> tf.Tensor:
    """int64, same shape as `values`, in [0, levels]: each value clipped to
    [-clip, clip] and rounded to the nearest grid point (half to even)."""
    values = tf.clip_by_value(tf.cast(values, tf.float64), -self.clip, self.clip)
    return tf.cast(tf.round((values + self.clip) / (2 * self.clip) * self.levels), tf.int64)

  def dequantize_sum(self, total, count) -> tf.Tensor:
    """float32, same shape as `total` (a sum mod 2^bits, read as an integer in
    [-headroom, 2^bits - 1 - headroom]): the affine map inverted for a sum of
    `count` quantised vectors, within count x resolution / 2 of the clipped sum
    (plus the noise)."""
    total = tf.math.floormod(tf.cast(total, tf.int64) + self.headroom, 2**self.bits)
    total = tf.cast(total - self.headroom, tf.float64)
    return tf.cast(total * self.resolution - tf.cast(count, tf.float64) * self.clip,
                   tf.float32)


class QuantizedSecureSumFactory(tff.aggregators.UnweightedAggregationFactory):
  """Sums float updates through TFF's integer secure sum after quantisation.

  Measurements: SecureSumFactory's, plus `clients` (hospitals summed).
  """

  def __init__(self, quantizer: Quantizer):
    self._quantizer = quantizer

  def create(self, value_type) -> tff.templates.AggregationProcess:
    quantizer = self._quantizer

    @tff.tensorflow.computation(value_type)
    def quantize_update(value):
      return tf.nest.map_structure(quantizer.quantize, value)

    int_type = quantize_update.type_signature.result
    inner = tff.aggregators.SecureSumFactory(
        upper_bound_threshold=quantizer.levels, lower_bound_threshold=0).create(int_type)

    @tff.tensorflow.computation(int_type, np.int32)
    def dequantize(total, count):
      return tf.nest.map_structure(lambda t: quantizer.dequantize_sum(t, count), total)

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
