"""Robust aggregation of the hospitals' updates: coordinate-wise median and
trimmed mean as `tff.aggregators` factories.

TFF ships norm-bounding (`tff.aggregators.clipping_factory`) and zeroing
(`tff.aggregators.zeroing_factory`) but no order statistic across clients, so
these two are written here. Both gather the cohort's values at the server with
`tff.federated_aggregate` over an accumulator with a dynamic first dimension
(one row per client) and reduce each coordinate on the server (measurement: `hospitals`, how many
updates it combined):

  median:        the middle value (mean of the two middle ones for an even
                 count) of each coordinate over the cohort;
  trimmed mean:  each coordinate's values sorted, the `trim` smallest and
                 `trim` largest dropped, the rest averaged.

They are weighted factories (so that they plug into TFF's weighted builders)
that ignore the weights: one hospital, one vote, since a weight is reported by
the hospital and so is as attackable as its update. Only a server that sees
every hospital's update can compute them: they cannot run over masked or
quantised secure sums.
"""

import collections

import tensorflow as tf
import tensorflow_federated as tff

from tff_med.config import ROBUST, RobustConfig


class _OrderStatisticFactory(tff.aggregators.WeightedAggregationFactory):
  """Gathers the clients' float values at the server and reduces each tensor
  [C, *shape] (C = clients) to [*shape] with `_reduce`; weights are ignored."""

  def _reduce(self, stacked: tf.Tensor) -> tf.Tensor:
    raise NotImplementedError

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    specs = tff.types.type_to_tf_tensor_specs(value_type)
    for spec in tf.nest.flatten(specs):
      if not spec.dtype.is_floating:
        raise TypeError(f'{type(self).__name__} aggregates float tensors, not {spec.dtype}')
    stacked_specs = tf.nest.map_structure(
        lambda s: tf.TensorSpec([None, *s.shape], s.dtype), specs)

    @tff.tensorflow.computation
    def zero():
      return tf.nest.map_structure(
          lambda s: tf.compat.v1.placeholder_with_default(
              tf.zeros([0, *s.shape[1:]], s.dtype), s.shape), stacked_specs)

    @tff.tensorflow.computation(stacked_specs, value_type)
    def accumulate(rows, value):
      return tf.nest.map_structure(lambda r, v: tf.concat([r, v[tf.newaxis]], 0), rows, value)

    @tff.tensorflow.computation(stacked_specs, stacked_specs)
    def merge(a, b):
      return tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), a, b)

    @tff.tensorflow.computation(stacked_specs)
    def report(rows):
      return tf.nest.map_structure(self._reduce, rows)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS),
                               tff.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, value, weight):
      del weight  # One hospital, one vote.
      result = tff.federated_aggregate(value, zero(), accumulate, merge, report)
      count = tff.federated_sum(tff.federated_value(1, tff.CLIENTS))
      return tff.templates.MeasuredProcessOutput(
          state=state, result=result,
          measurements=tff.federated_zip(collections.OrderedDict(hospitals=count)))

    return tff.templates.AggregationProcess(init_fn, next_fn)


class CoordinateMedianFactory(_OrderStatisticFactory):
  """Coordinate-wise median over the cohort."""

  def _reduce(self, stacked: tf.Tensor) -> tf.Tensor:
    ordered = tf.sort(stacked, axis=0)
    count = tf.shape(ordered)[0]
    return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2


class TrimmedMeanFactory(_OrderStatisticFactory):
  """Coordinate-wise mean after dropping the `trim` smallest and `trim` largest
  values; a cohort of at most 2 x trim clients fails the round (InvalidArgument)."""

  def __init__(self, trim: int = 1):
    if not isinstance(trim, int) or trim < 1:
      raise ValueError(f'robust trimmed mean: trim={trim!r} must be an integer >= 1')
    self.trim = trim

  def _reduce(self, stacked: tf.Tensor) -> tf.Tensor:
    count = tf.shape(stacked)[0]
    check = tf.debugging.assert_greater(count, 2 * self.trim, message=(
        f'trimmed mean drops {self.trim} update(s) at each end: it needs more than '
        f'{2 * self.trim} hospitals in the round'))
    with tf.control_dependencies([check]):
      kept = tf.sort(stacked, axis=0)[self.trim:count - self.trim]
    return tf.reduce_mean(kept, axis=0)


def robust_factory(robust: RobustConfig) -> tff.aggregators.WeightedAggregationFactory | None:
  """The weighted factory of `robust` (None for name 'none'), raising ValueError
  naming the `robust.*` field at fault.

    norm_bound:    each update scaled down to L2 norm at most `norm` (parameter
                   units), then TFF's weighted mean (`tff.aggregators.clipping_factory`);
                   norm None: `tff.learning.robust_aggregator`'s adaptive bound, an
                   estimate of the 0.8 quantile of the cohort's norms (starts at
                   1.0, moves geometrically with learning rate 0.2 each round);
    zeroing:       an update whose largest absolute value (L-infinity norm, TFF's
                   default) is above `norm` (None: the robust_aggregator's adaptive
                   threshold, 2 x an estimate of the 0.98 quantile of those norms +
                   1.0, the estimate starting at 10.0) is replaced by zeros, its
                   weight kept (`tff.aggregators.zeroing_factory`), then the
                   weighted mean;
    median:        `CoordinateMedianFactory`;
    trimmed_mean:  `TrimmedMeanFactory(trim)`.
  """
  name, norm, trim = robust.name, robust.norm, robust.trim
  if name not in ROBUST:
    raise ValueError(f'robust.name={name!r}: choose one of {", ".join(ROBUST)}')
  if norm is not None and name not in ('norm_bound', 'zeroing'):
    raise ValueError(f'robust.norm={norm} applies to robust.name=norm_bound or zeroing, not '
                     f'{name}')
  if norm is not None and not norm > 0:
    raise ValueError(f'robust.norm={norm}: must be positive')
  if trim != 1 and name != 'trimmed_mean':
    raise ValueError(f'robust.trim={trim} applies to robust.name=trimmed_mean, not {name}')
  if name == 'none':
    return None
  if name == 'median':
    return CoordinateMedianFactory()
  if name == 'trimmed_mean':
    return TrimmedMeanFactory(trim)
  if norm is None:
    return tff.learning.robust_aggregator(zeroing=name == 'zeroing',
                                          clipping=name == 'norm_bound')
  build = (tff.aggregators.clipping_factory if name == 'norm_bound'
           else tff.aggregators.zeroing_factory)
  return build(norm, tff.aggregators.MeanFactory())
