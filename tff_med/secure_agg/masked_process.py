"""FedAvg whose hospital updates reach the server only masked (`--secure_agg=masking`).

A round: the cohort's hospitals, each a `masking.Hospital` party, run steps 1-2
of the masking protocol (`masking.MaskingRound`), and each writes its secret
offset (self mask + pairwise masks, plus its discrete Gaussian noise share under
distributed DP, mod 2^bits) to a private file of its own. The TFF computation
trains on every hospital (TFF's `build_model_delta_client_work`), and in its
CLIENTS-placed part clips (L2, with DP) and quantises the update (`Quantizer`,
the one TFF's secure sum uses), reads that hospital's offset file (its path is a
CLIENTS-placed tf.string) and adds the offset modulo 2^bits: what leaves the
hospital is already masked. The driver routes only protocol messages and file
paths; the files are deleted when the round ends, also on error. A
`tff.aggregators` factory cannot take a CLIENTS-placed argument, hence this
process. The server (`masking.Server`) only ever receives messages; hospitals
named by `dropouts` leave after masking. Below the threshold the round aborts and
the model stays unchanged. The decoded sum is averaged over the survivors and
applied with TFF's optimizer finalizer.

Distributed DP (`noise_multiplier` z > 0): `ddp.DistributedDiscreteGaussian`
sizes the noise shares and the quantiser's headroom; `round_noise_multiplier`,
`planned_noise_multiplier` and `tau` state what a round carries. Training
statistics (loss, accuracy, AUC, noisy_steps) are summed in the clear:
`metrics['client_work_unprotected']`, neither masked nor noised.
"""

import collections
import dataclasses
import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.secure_agg.config import SecureAggConfig
from tff_med.secure_agg.ddp import DistributedDiscreteGaussian
from tff_med.secure_agg.masking import MaskingRound, SecureAggregationAborted


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
               server_optimizer: tff.learning.optimizers.Optimizer, secure: SecureAggConfig,
               max_cohort: int, l2_norm_clip: float | None = None,
               noise_multiplier: float = 0.0):
    """`secure`: bits, clip, threshold and colluders; `max_cohort`: the most
    hospitals a round can have (the quantiser is sized for it); `l2_norm_clip`:
    L2 clip of each update (parameter units, None: none); `noise_multiplier`: z
    of distributed DP (0: none; needs `l2_norm_clip`)."""
    with tf.Graph().as_default():
      model = model_fn()
      weights_type = tff.learning.models.weights_type_from_model(model)
      shapes = [v.shape.as_list() for v in model.trainable_variables]
    self._shapes = shapes
    self.num_params = int(sum(np.prod(s) for s in shapes))
    self._secure = secure
    self._noise = None
    if noise_multiplier:
      if l2_norm_clip is None:
        raise ValueError('distributed DP under masking needs an L2 clip')
      self._noise = DistributedDiscreteGaussian(secure, noise_multiplier, l2_norm_clip,
                                                self.num_params, max_cohort)
    self.quantizer = self._noise.quantizer if self._noise else secure.quantizer(max_cohort)
    self._client_work = client_work
    self._finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
        server_optimizer, weights_type)

    @tff.tensorflow.computation
    def initial_weights():
      return tff.learning.models.ModelWeights.from_model(model_fn())

    self._initial_weights = initial_weights
    update_type = client_work.next.type_signature.result.result.member.update
    quantizer = self.quantizer

    @tff.tensorflow.computation(update_type, np.str_)
    def quantize_and_mask(update, offset_path):
      flat = tf.concat([tf.reshape(u, [-1]) for u in tf.nest.flatten(update)], axis=0)
      if l2_norm_clip is not None:
        flat = tf.clip_by_norm(flat, l2_norm_clip)
      offset = tf.io.decode_raw(tf.io.read_file(offset_path), tf.int64, little_endian=True)
      return tf.math.floormod(quantizer.quantize(flat) + offset, 2**quantizer.bits)

    @tff.federated_computation(
        client_work.initialize.type_signature.result,
        tff.FederatedType(weights_type, tff.SERVER),
        client_work.next.type_signature.parameter[2],
        tff.FederatedType(np.str_, tff.CLIENTS))
    def masked_updates(work_state, weights, data, offset_paths):
      output = client_work.next(work_state, tff.federated_broadcast(weights), data)
      masked = tff.federated_map(quantize_and_mask, (output.result.update, offset_paths))
      return masked, output.state, output.measurements

    self._masked_updates = masked_updates

  def initialize(self) -> MaskedState:
    weights = self._initial_weights()
    return MaskedState(weights, self._finalizer.initialize(), self._client_work.initialize())

  def get_model_weights(self, state: MaskedState) -> tff.learning.models.ModelWeights:
    return state.model_weights

  @property
  def planned_noise_multiplier(self) -> float:
    """z: the noise multiplier of the worst released round (t survivors)."""
    return self._noise.noise_multiplier if self._noise else 0.0

  def round_noise_multiplier(self, survivors: int, cohort: int) -> float:
    """z sqrt((s - k - 1) / (t - k - 1)) for `survivors` (s) of `cohort` hospitals
    (threshold t, k colluders from it): the round's noise std / sensitivity
    against the server and k colluders (0 without DP)."""
    return self._noise.round_noise_multiplier(survivors, cohort) if self._noise else 0.0

  def tau(self, survivors: int, cohort: int) -> float:
    """Kairouz-Liu-Steinke tau of that round's honest discrete Gaussian shares
    (`ddp.py`); raises ValueError without DP."""
    if not self._noise:
      raise ValueError('no distributed DP noise: tau is undefined')
    return self._noise.tau(survivors, cohort)

  def next(self, state: MaskedState, datasets, hospitals, dropouts=()) -> RoundOutput:
    """One round among `hospitals` (names, same order as `datasets`); `dropouts`
    leave after masking. Threshold: `SecureAggConfig.threshold_for` the cohort.
    metrics: `aggregator` (aborted, survivors, dropped, bytes_per_client,
    masked_bytes; aborted rounds: aborted, survivors, reason),
    `client_work_unprotected` (the plain sum of the client work's statistics),
    `finalizer`."""
    cohort = len(hospitals)
    metrics = collections.OrderedDict(client_work_unprotected=collections.OrderedDict(
        train=collections.OrderedDict(loss=math.nan, accuracy=math.nan, auc=math.nan)))
    try:
      noise_scale = self._noise.share_scale(cohort) if self._noise else 0
      with MaskingRound(hospitals, self.quantizer.bits, self._secure.threshold_for(cohort),
                        noise_scale) as round_:
        masked, work_state, metrics['client_work_unprotected'] = self._masked_updates(
            state.client_work, state.model_weights, datasets,
            round_.offset_files(self.num_params))
        state = dataclasses.replace(state, client_work=work_state)
        total, stats = round_.finish({h: np.asarray(y).astype(np.uint64)
                                      for h, y in zip(hospitals, masked) if h not in dropouts})
    except SecureAggregationAborted as e:
      metrics['aggregator'] = {'aborted': 1, 'survivors': cohort - len(dropouts),
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
