"""Masking (`secure_agg.mode=masking`): FedAvg whose hospital updates reach the
server only masked, as an implementation of the round protocol.

A round: the cohort's hospitals, each a `masking.Hospital` party, run steps 1-2
of the masking protocol (`masking.MaskingRound`), and each writes its secret
offset (self mask + pairwise masks, plus its discrete Gaussian noise share under
distributed DP, mod 2^bits) to a private file of its own. The TFF computation
trains on every hospital of the cohort (TFF's `build_model_delta_client_work`
or DP-SGD's client work), and in its CLIENTS-placed part clips (L2, with DP)
and quantises the update (`Quantizer`, the one TFF's secure sum uses), reads
that hospital's offset file (its path is a CLIENTS-placed tf.string) and adds
the offset modulo 2^bits: what leaves the hospital is already masked. The
driver routes only protocol messages and file paths; the files are deleted
when the round ends, also on error. A `tff.aggregators` factory cannot take a
CLIENTS-placed argument, hence a plan of its own. The server (`masking.Server`)
only ever receives messages; the cohort's hospitals that are not reporting drop
out after masking. Below the threshold the round aborts and the model stays
unchanged. The decoded sum is averaged over the survivors and applied with
TFF's optimizer finalizer.

Distributed DP (`noise_multiplier` z > 0): `ddp.DistributedDiscreteGaussian`
sizes the noise shares and the quantiser's headroom; `round_noise_multiplier`,
`planned_noise_multiplier`, `tau` and `noise_event` state what a round carries.
Training statistics (loss, accuracy, AUC) of the reporting hospitals, and
DP-SGD's noisy_steps of every hospital that trained (public sizes), are summed
in the clear, neither masked nor noised (under DP the client work computes no
statistic).
"""

import dataclasses
import math
from typing import NamedTuple

import dp_accounting
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.algorithms import model_delta_client_work, server_optimizer
from tff_med.mechanisms.learning import DatasetFn, client_metrics, scalar_leaves
from tff_med.mechanisms.round_plan import Round, RoundPlan, RoundResult
from tff_med.mechanisms.task import Task
from tff_med.privacy.dp_account import no_dp
from tff_med.secure_agg.ddp import DistributedDiscreteGaussian
from tff_med.secure_agg.masking import MaskingRound, SecureAggregationAborted


class MaskedState(NamedTuple):
  """Server state: global model weights, server optimizer state, client work state
  (a NamedTuple, as TFF's own learning state, so that `tff.program` can save it)."""
  model_weights: tff.learning.models.ModelWeights
  finalizer: object
  client_work: object


class MaskingPlan(RoundPlan):
  """Rounds of pairwise-masked FedAvg. metrics: `train` (plain sum of the client
  work's statistics, where it computes them), `aggregator` (aborted, survivors,
  dropped, bytes_per_client, masked_bytes; aborted rounds: aborted, survivors)."""

  def __init__(self, task: Task, client_work: tff.learning.templates.ClientWorkProcess,
               dataset_fn: DatasetFn | None = None, l2_norm_clip: float | None = None,
               noise_multiplier: float = 0.0, colluders: int | None = None):
    """`client_work`: what each hospital computes; `dataset_fn`: default
    `task.dataset`; `l2_norm_clip`: L2 clip of each update (parameter units,
    None: none); `noise_multiplier`: z of distributed DP (0: none; needs
    `l2_norm_clip`); `colluders`: overrides `secure_agg.colluders` (hospital-level
    DP sizes every round for one coalition). The quantiser is sized for every
    hospital of the study in one round."""
    self.task = task
    self._dataset_fn = dataset_fn or task.dataset
    secure = task.config.secure_agg
    if colluders is not None:
      secure = dataclasses.replace(secure, colluders=colluders)
    model_fn, max_cohort = task.model_fn, len(task.data.hospitals)
    server_opt = server_optimizer(task.config.algorithm)
    self._record = {'bytes_per_client': [], 'aborted_rounds': 0, 'tau': 0.0}
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
        server_opt, weights_type)

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

  def set_model_weights(self, state: MaskedState, weights) -> MaskedState:
    return state._replace(model_weights=weights)

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

  def noise_event(self, round_: Round, result: RoundResult) -> dp_accounting.DpEvent:
    """The DP event of the round's released sum against the server and the
    colluders: Gaussian with the noise the honest survivors carried; NoOp if
    nothing was released."""
    if not result.applied:
      return dp_accounting.NoOpDpEvent()
    return dp_accounting.GaussianDpEvent(self.round_noise_multiplier(
        int(result.metrics['aggregator']['survivors']), len(round_.cohort)))

  def run_round(self, state: MaskedState, round_: Round) -> RoundResult:
    """Every hospital of the cohort trains and masks; those not reporting drop
    out after masking. Threshold: `SecureAggConfig.threshold_for` the cohort.
    The hospitals that drop out train in a computation of their own, whose
    masked updates and training statistics go nowhere (their DP-SGD step count,
    a function of public sizes, is added to `noisy_steps`, which counts the
    hospitals that trained)."""
    hospitals = list(round_.cohort)
    if not hospitals:
      return self.skip_round(state, round_)
    cohort = len(hospitals)
    groups = ([h for h in hospitals if h in round_.reporting],
              [h for h in hospitals if h not in round_.reporting])
    try:
      noise_scale = self._noise.share_scale(cohort) if self._noise else 0
      with MaskingRound(hospitals, self.quantizer.bits, self._secure.threshold_for(cohort),
                        noise_scale) as round_masks:
        paths = dict(zip(hospitals, round_masks.offset_files(self.num_params)))
        train_and_mask = lambda group: self._masked_updates(  # (masked, work state, metrics)
            state.client_work, state.model_weights,
            [self._dataset_fn(h, round_.number) for h in group], [paths[h] for h in group])
        reporting, dropped = (train_and_mask(group) if group else None for group in groups)
        work_state, work_metrics = ((reporting[1], reporting[2]) if reporting
                                    else (dropped[1], {}))
        state = state._replace(client_work=work_state)
        total, stats = round_masks.finish({h: np.asarray(y).astype(np.uint64)
                                           for h, y in zip(groups[0], reporting[0])}
                                          if reporting else {})
    except SecureAggregationAborted as e:
      self._record['aborted_rounds'] += 1
      return RoundResult(state, {'aggregator': {'aborted': 1,
                                                'survivors': len(round_.reporting)}},
                         applied=False, trained=round_.cohort,
                         note=f'secure aggregation aborted, model unchanged: {e}')
    count = len(stats['survivors'])
    mean = self.quantizer.dequantize_sum(total, count).numpy() / count
    finalized = self._finalizer.next(state.finalizer, state.model_weights,
                                     self._unflatten(mean))
    aggregator = {
        'aborted': 0, 'survivors': count, 'dropped': len(stats['dropped']),
        'bytes_per_client': float(np.mean(list(stats['bytes_per_client'].values()))),
        'masked_bytes': stats['masked_bytes']}
    self._record['bytes_per_client'].append(aggregator['bytes_per_client'])
    if self._noise:
      self._record['tau'] = max(self._record['tau'], self.tau(count, cohort))
    metrics = {**client_metrics(scalar_leaves(work_metrics)), 'aggregator': aggregator}
    if dropped and 'noisy_steps' in metrics:
      metrics['noisy_steps'] += scalar_leaves(dropped[2])['noisy_steps']
    return RoundResult(MaskedState(finalized.result, finalized.state, state.client_work),
                       metrics, trained=round_.cohort)

  def summary(self) -> dict:
    secure, sent = self._secure, self._record['bytes_per_client']
    return {'secure_aggregation': {
        'mode': 'masking', 'bits': self.quantizer.bits, 'clip': secure.clip,
        'threshold': secure.threshold or 'max(2, ceil(2n/3))',
        'colluders': 't-2' if secure.colluders is None else secure.colluders,
        'aborted_rounds': self._record['aborted_rounds'],
        **({'noise_approximation_tau': self._record['tau']} if self._noise else {}),
        'bytes_per_client': float(np.mean(sent)) if sent else math.nan},
            'privacy': no_dp(self.task.data, 'through secure_agg.mode=masking, no DP')}

  def checkpoint(self) -> dict:
    return {'masking': dict(self._record)}

  def restore(self, saved: dict) -> None:
    self._record = dict(saved['masking'])

  def _unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
    parts, offset = [], 0
    for shape in self._shapes:
      size = int(np.prod(shape))
      parts.append(flat[offset:offset + size].reshape(shape).astype(np.float32))
      offset += size
    return parts


def fedavg_client_work(task: Task, metrics_aggregator=None
                       ) -> tff.learning.templates.ClientWorkProcess:
  """FedAvg's local SGD with unweighted updates (a secure sum cannot weight);
  `metrics_aggregator`: TFF's (None: its default, which sums training metrics)."""
  return model_delta_client_work(task.config.algorithm, task.model_fn,
                                 tff.learning.ClientWeighting.UNIFORM, metrics_aggregator)


def masking_aggregation(task: Task, client_work=None, dataset_fn: DatasetFn | None = None,
                        aggregator=None, **dp) -> MaskingPlan:
  """Pairwise masking (`secure_agg.mode=masking`) over `client_work` (None:
  FedAvg's); `dp`: `MaskingPlan`'s l2_norm_clip, noise_multiplier, colluders."""
  if aggregator is not None:
    raise ValueError('secure_agg.mode=masking sums masked updates itself: a user aggregator '
                     'cannot see them (use secure_agg.mode=none to aggregate with it)')
  if task.config.algorithm.name == 'fedprox':
    raise ValueError('secure_agg.mode=masking trains with plain local SGD: use '
                     'algorithm.name=fedavg, fedadam, fedyogi or fedadagrad')
  return MaskingPlan(task, client_work or fedavg_client_work(task), dataset_fn, **dp)
