"""TFF's quantised secure sum and the masking protocol: same aggregate; the masked
learning process against plain FedAvg; what its driver handles (offset file
paths, never masks); distributed DP noise in it; aborted rounds leave the model
unchanged."""

import os

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_med import runtime, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model
from tff_med.secure_agg import QuantizedSecureSumFactory, Quantizer, secure_sum
from tff_med.secure_agg.config import SecureAggConfig
from tff_med.mechanisms.masking import MaskingPlan
from tff_med.mechanisms.round_plan import Round
from tff_med.mechanisms.task import Task, client_dataset


def test_tff_secure_sum_and_masking_give_the_same_aggregate():
  rng = np.random.default_rng(3)
  names = ['north', 'south', 'east', 'west', 'centre']
  updates = {h: rng.normal(0, 0.4, 257).astype(np.float32) for h in names}
  for bits in (8, 16, 32):
    quantizer = Quantizer(bits, 1.0, len(names))
    with runtime.execution_context(secure_sums=True):
      process = QuantizedSecureSumFactory(quantizer).create(tff.TensorType(np.float32, [257]))
      tff_sum = process.next(process.initialize(), list(updates.values())).result
    masked_total, _, _ = secure_sum(
        {h: quantizer.quantize(u).numpy().astype(np.uint64) for h, u in updates.items()},
        bits, threshold=3)
    masked_sum = quantizer.dequantize_sum(masked_total, len(names)).numpy()
    np.testing.assert_array_equal(tff_sum, masked_sum)  # Same integers, same map back.
    clipped = np.sum([np.clip(u, -1, 1) for u in updates.values()], axis=0)
    assert np.abs(masked_sum - clipped).max() <= len(names) * quantizer.resolution / 2 + 1e-5


def _data():
  rng = np.random.default_rng(8)
  arrays = {}
  for h, n in {'a': 15, 'b': 22, 'c': 30, 'd': 18}.items():
    x = rng.normal(size=(n, 3)).astype(np.float32)
    arrays[h] = (x, (x[:, 0] - x[:, 1] > 0).astype(np.int64))
  return FederatedData.from_arrays('toy', arrays, arrays)


def _config(**secure):
  return training.TrainConfig(
      AlgorithmConfig('fedavg', client_lr=0.3, client_weighting='uniform'), rounds=3,
      batch_size=8, eval_every=3, secure_agg=SecureAggConfig(**secure))


def _keras():
  return build_keras_model(ModelConfig('logreg'), (3,), seed=2)


def _final_weights(config, data):
  summary = training.run(data, _keras, config, log=lambda line: None)
  return summary


def test_masked_fedavg_matches_plain_fedavg_up_to_quantisation():
  data = _data()
  plain = _final_weights(_config(), data)
  for mode in ('tff', 'masking'):
    secure = _final_weights(_config(mode=mode, bits=20, clip=2.0), data)
    assert secure['secure_aggregation']['mode'] == mode
    for h in data.hospitals:  # 20-bit quantisation: the same predictions.
      assert secure['per_hospital'][h]['accuracy'] == plain['per_hospital'][h]['accuracy']
      assert secure['per_hospital'][h]['auc'] == pytest.approx(plain['per_hospital'][h]['auc'],
                                                               abs=0.02)
  assert plain['secure_aggregation']['bytes_per_client'] == 4 * 4  # 4 float32 parameters.


class _Spy:
  """Wraps the process's TFF computation, recording what the driver passes it
  and whether each offset file existed then."""

  def __init__(self, computation):
    self._computation, self.calls = computation, []

  def __call__(self, *args):
    paths = args[-1]
    self.calls.append((args, [os.path.exists(p) for p in paths]))
    return self._computation(*args)


def _process_round(noise_multiplier=0.0, l2_norm_clip=None):
  """A masked process on the toy data: its round with 'b' dropping, a round with
  'b' and 'c' dropping (aborted), the same clients' plain TFF client work, the
  initial state and the spy on the TFF computation."""
  data = _data()
  config = _config(mode='masking', bits=16, clip=1.0)
  task = Task(data, _keras, config)
  with runtime.execution_context():
    client_work = tff.learning.templates.build_model_delta_client_work(
        task.model_fn, tff.learning.optimizers.build_sgdm(0.3),
        tff.learning.ClientWeighting.UNIFORM)
    process = MaskingPlan(task, client_work, lambda h, _: client_dataset(data, h, config, 0),
                          l2_norm_clip, noise_multiplier)
    spy = _Spy(process._masked_updates)
    process._masked_updates = spy
    state = process.initialize()
    datasets = [client_dataset(data, h, config, 0) for h in data.hospitals]
    cohort = tuple(data.hospitals)
    one_drop = process.run_round(state, Round(1, cohort, ('a', 'c', 'd')))
    aborted = process.run_round(state, Round(1, cohort, ('a', 'd')))
    # The same clients' own updates, unmasked, straight from TFF's client work.
    plain = client_work.next(client_work.initialize(), [state.model_weights] * 4, datasets)
  deltas = {h: -np.concatenate([np.ravel(u) for u in r.update])  # TFF: update = w0 - w.
            for h, r in zip(data.hospitals, plain.result)}
  return process, state, one_drop, aborted, deltas, spy


@pytest.fixture(scope='module')
def plain_round():
  """`_process_round()` without DP, run once for the tests below."""
  return _process_round()


def _flat(weights):
  return np.concatenate([np.ravel(w) for w in weights.trainable])


def test_masked_process_round_against_numpy_and_abort(plain_round):
  process, state, one_drop, aborted, deltas, _ = plain_round
  quantizer = Quantizer(16, 1.0, 4)
  assert process.quantizer == quantizer
  survivors = ['a', 'c', 'd']  # 'b' dropped after masking.
  expected = _flat(state.model_weights) + np.mean([np.clip(deltas[h], -1, 1) for h in survivors],
                                                  axis=0)
  np.testing.assert_allclose(_flat(one_drop.state.model_weights), expected,
                             atol=quantizer.resolution)
  assert one_drop.metrics['aggregator']['survivors'] == 3
  assert set(one_drop.metrics['aggregator']) == {'aborted', 'survivors', 'dropped',
                                                 'bytes_per_client', 'masked_bytes'}
  # Without DP, training statistics are summed in the clear and released as such.
  assert set(one_drop.metrics['train']) == {'loss', 'accuracy', 'auc'}
  # Two dropouts leave 2 < ceil(2 * 4 / 3) = 3 survivors: aborted, model unchanged.
  assert aborted.metrics['aggregator']['aborted'] == 1
  for got, want in zip(aborted.state.model_weights.trainable, state.model_weights.trainable):
    np.testing.assert_array_equal(got, want)


def test_masked_process_driver_routes_only_offset_file_paths(plain_round):
  """C1: the TFF computation gets, besides state, weights and data, only one
  string path per hospital (no mask, no seed); each file existed while it ran,
  in a folder of its own, and is gone after the round. Each round is two calls:
  the reporting hospitals, and those that drop out (whose outputs go nowhere)."""
  spy = plain_round[-1]
  assert [len(args[-1]) for args, _ in spy.calls] == [3, 1, 2, 2]
  for round_calls in (spy.calls[:2], spy.calls[2:]):
    paths = [p for args, _ in round_calls for p in args[-1]]
    for args, existed in round_calls:
      assert len(args) == 4 and all(isinstance(p, str) for p in args[-1]) and all(existed)
    assert len({os.path.dirname(p) for p in paths}) == len(paths) == 4
    assert not any(os.path.exists(os.path.dirname(p)) for p in paths)


def test_masked_process_with_distributed_dp_noise():
  """m5/M4: with noise multiplier z the round's mean moves off the noiseless one
  by the discrete Gaussian noise of the 3 survivors, within 7 std, differently
  on each run; the process states z and the closed form for the round."""
  z, clip = 0.5, 1.0
  runs = [_process_round(z, clip) for _ in range(2)]
  process, state, one_drop, _, deltas, _ = runs[0]
  quantizer = process.quantizer
  assert quantizer.headroom > 0 and process.planned_noise_multiplier == z
  t, k = 3, 1  # ceil(2 * 4 / 3); colluders default to t - 2.
  assert process.round_noise_multiplier(3, 4) == pytest.approx(z * np.sqrt((3 - k - 1) /
                                                                            (t - k - 1)))
  assert process.tau(3, 4) == pytest.approx(0.0, abs=1e-12)
  sigma = process._noise.share_scale(4)
  clipped = {h: u * min(1.0, clip / np.linalg.norm(u)) for h, u in deltas.items()}
  expected = _flat(state.model_weights) + np.mean([clipped[h] for h in 'acd'], axis=0)
  moves = [_flat(run[2].state.model_weights) - expected for run in runs]
  bound = (7 * np.sqrt(3) * sigma + 3) * quantizer.resolution / 3  # Noise + rounding, mean of 3.
  for move in moves:
    assert np.abs(move).max() < bound and np.abs(move).max() > 0
  assert not np.array_equal(*moves)


@pytest.mark.parametrize('secure,message', [
    (SecureAggConfig('masking', threshold=9), 'secure_agg.threshold=9'),
    (SecureAggConfig('masking', threshold=2), 'secure_agg.threshold=2'),  # Half of 4.
    (SecureAggConfig('tff', bits=40), 'secure_agg.bits=40'),
    (SecureAggConfig('tff', threshold=3), 'apply to secure_agg.mode=masking'),
])
def test_bad_secure_aggregation_flags(secure, message):
  config = training.TrainConfig(AlgorithmConfig(client_weighting='uniform'), secure_agg=secure)
  with pytest.raises(ValueError, match=message):
    training.build_plan(_data(), _keras, config, log=lambda line: None)


def test_masking_with_hospital_level_dp_needs_fixed_clipping():
  from tff_med.privacy.dp_account import PrivacyConfig  # pylint: disable=g-import-not-at-top
  config = training.TrainConfig(
      AlgorithmConfig(client_weighting='uniform'), secure_agg=SecureAggConfig('masking'),
      privacy=PrivacyConfig('client', noise_multiplier=1.0, clipping='adaptive'))
  with pytest.raises(ValueError, match='privacy.clipping=fixed'):
    training.build_plan(_data(), _keras, config, log=lambda line: None)


def test_secure_aggregation_needs_uniform_weighting():
  with pytest.raises(ValueError, match='algorithm.client_weighting=uniform'):
    training.build_plan(_data(), _keras, training.TrainConfig(
        secure_agg=SecureAggConfig('tff')), log=lambda line: None)
