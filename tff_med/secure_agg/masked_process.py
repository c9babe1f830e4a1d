"""FedAvg whose hospital updates reach the server only masked (`--secure_agg=masking`).

A round: the hospitals of the cohort run steps 1-2 of the masking protocol
(`masking.MaskingRound`: key agreement and secret sharing in each hospital's own
Python object) and each gets its mask. The TFF computation then trains on every
hospital (TFF's `build_model_delta_client_work`), clips and quantises the update
(`Quantizer`, the one TFF's secure sum uses), optionally adds the hospital's
share of the DP noise, and adds the hospital's mask modulo 2^bits: its
CLIENTS-placed output is already masked. The mask arrives as a CLIENTS-placed
argument, which a `tff.aggregators` factory cannot take, hence this process. The
server side (`MaskingRound.finish`) only ever receives masked vectors; hospitals
named by `dropouts` leave after masking. Below the threshold the round aborts and
the model stays unchanged. The unmasked sum is averaged and applied with TFF's
optimizer finalizer.

Distributed DP (`noise_stddev` > 0): each hospital clips its update to L2 norm
`l2_norm_clip` and adds Gaussian noise of std noise_stddev / sqrt(cohort size),
so that a full cohort's sum carries noise of std `noise_stddev`; with dropouts
the sum carries less, and `round_noise_multiplier` says how much.
"""

import collections
import dataclasses
import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.secure_agg.masking import MaskingRound, SecureAggregationAborted
from tff_med.secure_agg.tff_secure_sum import Quantizer


@dataclasses.dataclass(frozen=True)
class MaskedState:
  """Server state: global model weights, server optimizer state, client work state."""
  model_weights: tff.learning.models.ModelWeights
  finalizer: object
  client_work: object


@dataclasses.dataclass(frozen=True)
class RoundOutput:
  state: MaskedState
  metrics: dict


class MaskedLearningProcess:
  """Same calling convention as a `tff.learning` LearningProcess, except that
  `next` also takes the names of the cohort's hospitals (their keys) and the
  ones that drop after masking."""

  def __init__(self, model_fn, client_work: tff.learning.templates.ClientWorkProcess,
               server_optimizer: tff.learning.optimizers.Optimizer, quantizer: Quantizer,
               threshold: int = 0, l2_norm_clip: float | None = None,
               noise_stddev: float = 0.0):
    with tf.Graph().as_default():
      model = model_fn()
      weights_type = tff.learning.models.weights_type_from_model(model)
      shapes = [v.shape.as_list() for v in model.trainable_variables]
    self._shapes = shapes
    self.num_params = int(sum(np.prod(s) for s in shapes))
    self.quantizer, self.threshold = quantizer, threshold
    self._noise_stddev = noise_stddev
    self._client_work = client_work
    self._finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
        server_optimizer, weights_type)

    @tff.tensorflow.computation
    def initial_weights():
      return tff.learning.models.ModelWeights.from_model(model_fn())

    self._initial_weights = initial_weights
    update_type = client_work.next.type_signature.result.result.member.update
    mask_type = tff.TensorType(np.int64, [self.num_params])
    modulus = 2**quantizer.bits

    @tff.tensorflow.computation(update_type, mask_type, np.int32)
    def quantize_and_mask(update, mask, cohort_size):
      flat = tf.concat([tf.reshape(u, [-1]) for u in tf.nest.flatten(update)], axis=0)
      if l2_norm_clip is not None:
        flat = tf.clip_by_norm(flat, l2_norm_clip)
      if noise_stddev > 0:
        flat += tf.random.normal(tf.shape(flat), dtype=flat.dtype,
                                 stddev=noise_stddev / tf.sqrt(tf.cast(cohort_size, tf.float32)))
      return tf.math.floormod(quantizer.quantize(flat) + mask, modulus)

    @tff.federated_computation(
        client_work.initialize.type_signature.result,
        tff.FederatedType(weights_type, tff.SERVER),
        client_work.next.type_signature.parameter[2],
        tff.FederatedType(mask_type, tff.CLIENTS),
        tff.FederatedType(np.int32, tff.SERVER))
    def masked_updates(work_state, weights, data, masks, cohort_size):
      output = client_work.next(work_state, tff.federated_broadcast(weights), data)
      masked = tff.federated_map(quantize_and_mask, (
          output.result.update, masks, tff.federated_broadcast(cohort_size)))
      return masked, output.state, output.measurements

    self._masked_updates = masked_updates

  def initialize(self) -> MaskedState:
    weights = self._initial_weights()
    return MaskedState(weights, self._finalizer.initialize(), self._client_work.initialize())

  def get_model_weights(self, state: MaskedState) -> tff.learning.models.ModelWeights:
    return state.model_weights

  def round_noise_multiplier(self, survivors: int, cohort: int, l2_norm_clip: float) -> float:
    """Noise std of a sum of `survivors` of `cohort` hospitals' updates, in clips."""
    return self._noise_stddev * math.sqrt(survivors / cohort) / l2_norm_clip

  def next(self, state: MaskedState, datasets, hospitals, dropouts=()) -> RoundOutput:
    """One round among `hospitals` (names, same order as `datasets`); `dropouts`
    leave after masking. Threshold: the constructor's, or ceil(2n / 3) (at least
    2) for a cohort of n."""
    threshold = self.threshold or max(2, math.ceil(2 * len(hospitals) / 3))
    metrics = collections.OrderedDict(client_work=collections.OrderedDict(
        train=collections.OrderedDict(loss=math.nan, accuracy=math.nan, auc=math.nan)))
    try:
      round_ = MaskingRound(hospitals, self.quantizer.bits, threshold)
      masks = round_.masks(self.num_params)
      masked, work_state, metrics['client_work'] = self._masked_updates(
          state.client_work, state.model_weights, datasets,
          [masks[h].astype(np.int64) for h in hospitals], len(hospitals))
      state = dataclasses.replace(state, client_work=work_state)
      delivered = {h: np.asarray(y).astype(np.uint64) for h, y in zip(hospitals, masked)
                   if h not in dropouts}
      total, stats = round_.finish(delivered)
    except SecureAggregationAborted as e:
      metrics['aggregator'] = {'aborted': 1, 'survivors': len(hospitals) - len(dropouts),
                               'reason': str(e)}
      return RoundOutput(state, metrics)
    count = len(stats['survivors'])
    mean = self.quantizer.dequantize_sum(total, count).numpy() / count
    finalized = self._finalizer.next(state.finalizer, state.model_weights,
                                     self._unflatten(mean))
    metrics['aggregator'] = {
        'aborted': 0, 'survivors': count, 'dropped': len(stats['dropped']),
        'bytes_per_client': float(np.mean(list(stats['bytes_per_client'].values()))),
        'masked_bytes': stats['masked_bytes']}
    metrics['finalizer'] = finalized.measurements
    return RoundOutput(MaskedState(finalized.result, finalized.state, state.client_work),
                       metrics)

  def _unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
    parts, offset = [], 0
    for shape in self._shapes:
      size = int(np.prod(shape))
      parts.append(flat[offset:offset + size].reshape(shape).astype(np.float32))
      offset += size
    return parts
