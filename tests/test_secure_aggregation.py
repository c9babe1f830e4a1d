"""TFF's quantised secure sum and the masking protocol: same aggregate; the masked
learning process against plain FedAvg; aborted rounds leave the model unchanged."""

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_med import runtime, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model, tff_model_fn
from tff_med.secure_agg import QuantizedSecureSumFactory, Quantizer, secure_sum
from tff_med.secure_agg.config import SecureAggConfig
from tff_med.secure_agg.masked_process import MaskedLearningProcess


def test_tff_secure_sum_and_masking_give_the_same_aggregate():
  rng = np.random.default_rng(3)
  names = ['north', 'south', 'east', 'west', 'centre']
  updates = {h: rng.normal(0, 0.4, 257).astype(np.float32) for h in names}
  for bits in (8, 16, 32):
    quantizer = Quantizer(bits, 1.0, len(names))
    with runtime.execution_context(secure_sums=True):
      process = QuantizedSecureSumFactory(quantizer).create(tff.TensorType(np.float32, [257]))
      tff_sum = process.next(process.initialize(), list(updates.values())).result
    masked_total, _ = secure_sum(
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


def _final_weights(config, data):
  keras_fn = lambda: build_keras_model(ModelConfig('logreg'), (3,), seed=2)
  summary = training.run(data, keras_fn, config, log=lambda line: None)
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


def test_masked_process_round_against_numpy_and_abort():
  data = _data()
  config = _config(mode='masking', bits=16, clip=1.0)
  keras_fn = lambda: build_keras_model(ModelConfig('logreg'), (3,), seed=2)
  probe = training.client_dataset(data, 'a', config, 0)
  model_fn = tff_model_fn(keras_fn, probe.element_spec)
  quantizer = Quantizer(16, 1.0, 4)
  with runtime.execution_context():
    client_work = tff.learning.templates.build_model_delta_client_work(
        model_fn, tff.learning.optimizers.build_sgdm(0.3), tff.learning.ClientWeighting.UNIFORM)
    process = MaskedLearningProcess(model_fn, client_work, tff.learning.optimizers.build_sgdm(1.0),
                                    quantizer)
    state = process.initialize()
    datasets = [training.client_dataset(data, h, config, 0) for h in data.hospitals]
    one_drop = process.next(state, datasets, list(data.hospitals), dropouts=['b'])
    aborted = process.next(state, datasets, list(data.hospitals), dropouts=['b', 'c'])
    # The same clients' own updates, unmasked, straight from TFF's client work.
    plain = client_work.next(client_work.initialize(), [state.model_weights] * 4, datasets)
  before = np.concatenate([np.ravel(w) for w in state.model_weights.trainable])
  deltas = {h: -np.concatenate([np.ravel(u) for u in r.update])  # TFF: update = w0 - w.
            for h, r in zip(data.hospitals, plain.result)}
  survivors = ['a', 'c', 'd']  # 'b' dropped after masking.
  expected = before + np.mean([np.clip(deltas[h], -1, 1) for h in survivors], axis=0)
  after = np.concatenate([np.ravel(w) for w in one_drop.state.model_weights.trainable])
  np.testing.assert_allclose(after, expected, atol=quantizer.resolution)
  assert one_drop.metrics['aggregator']['survivors'] == 3
  # Two dropouts leave 2 < ceil(2 * 4 / 3) = 3 survivors: aborted, model unchanged.
  assert aborted.metrics['aggregator']['aborted'] == 1
  for got, want in zip(aborted.state.model_weights.trainable, state.model_weights.trainable):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('secure,message', [
    (SecureAggConfig('masking', dropouts=4), '--simulate_dropouts=4'),
    (SecureAggConfig('masking', threshold=9), '--secagg_threshold=9'),
    (SecureAggConfig('tff', bits=40), '--secagg_bits=40'),
    (SecureAggConfig('tff', dropouts=1), 'apply to --secure_agg=masking'),
])
def test_bad_secure_aggregation_flags(secure, message):
  config = training.TrainConfig(AlgorithmConfig(client_weighting='uniform'), secure_agg=secure)
  with pytest.raises(ValueError, match=message):
    config.validate(4)


def test_masking_with_hospital_level_dp_needs_fixed_clipping():
  from tff_med.privacy.dp_training import PrivacyConfig  # pylint: disable=g-import-not-at-top
  config = training.TrainConfig(
      AlgorithmConfig(client_weighting='uniform'), secure_agg=SecureAggConfig('masking'),
      privacy=PrivacyConfig('client', noise_multiplier=1.0, clipping='adaptive'))
  with pytest.raises(ValueError, match='--dp_clipping=fixed'):
    config.validate(4)


def test_secure_aggregation_needs_uniform_weighting():
  with pytest.raises(ValueError, match='--client_weighting=uniform'):
    training.TrainConfig(secure_agg=SecureAggConfig('tff')).validate(4)
