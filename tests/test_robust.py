"""Robust aggregators against numpy references, and the simulated bad hospital's
update against the honest one."""

import functools
import re

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_med import data as data_lib
from tff_med import runtime, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import AttackConfig, RobustConfig, TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms import attacks
from tff_med.mechanisms.learning import plain_aggregation
from tff_med.mechanisms.robust import CoordinateMedianFactory, TrimmedMeanFactory
from tff_med.mechanisms.round_plan import Round
from tff_med.mechanisms.task import Task
from tff_med.models import ModelConfig, build_keras_model
from tff_med.privacy.dp_account import PrivacyConfig
from tff_med.secure_agg.config import SecureAggConfig

_VALUE_TYPE = tff.types.to_type([(np.float32, (3,)), (np.float32, (2, 2))])


@pytest.mark.parametrize('factory,reference', [
    (CoordinateMedianFactory(), lambda a: np.median(a, axis=0)),
    (TrimmedMeanFactory(1), lambda a: np.sort(a, axis=0)[1:-1].mean(axis=0)),
    (TrimmedMeanFactory(2), lambda a: np.sort(a, axis=0)[2:-2].mean(axis=0)),
])
def test_order_statistics_equal_numpy_on_random_updates(factory, reference):
  rng = np.random.default_rng(0)
  process = factory.create(_VALUE_TYPE, tff.TensorType(np.float32))
  with runtime.execution_context(secure_sums=False):
    for clients in (5, 6, 9):
      values = [[rng.normal(size=3).astype(np.float32),
                 rng.standard_cauchy(size=(2, 2)).astype(np.float32)] for _ in range(clients)]
      weights = rng.uniform(1, 100, size=clients).astype(np.float32).tolist()  # Ignored.
      result = process.next(process.initialize(), values, weights).result
      for part in range(2):
        np.testing.assert_allclose(result[part],
                                   reference(np.stack([v[part] for v in values])), rtol=1e-6)


def test_trimmed_mean_refuses_a_cohort_it_would_empty():
  process = TrimmedMeanFactory(1).create(_VALUE_TYPE, tff.TensorType(np.float32))
  values = [[np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]] * 2
  with runtime.execution_context(secure_sums=False):
    with pytest.raises(Exception, match='needs more than 2 hospitals'):
      process.next(process.initialize(), values, [1.0, 1.0])
  with pytest.raises(ValueError, match='trim=0'):
    TrimmedMeanFactory(0)


@pytest.fixture(scope='module')
def task():
  data = data_lib.load(data_lib.DataConfig('breast_cancer'))
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('logreg'),
                                     data.feature_shape, 0)
  return Task(data, keras_model_fn,
              TrainConfig(AlgorithmConfig('fedavg', client_lr=0.05), rounds=3, batch_size=16))


def _steps(task, attack: str, scale: float = 10.0) -> list[np.ndarray]:
  """The global model's step in each of 3 rounds in which only the attacker
  (the first hospital) reports; FedAvg with server step 1 applies its update."""
  hospital = task.data.hospitals[0]
  build = (plain_aggregation if attack == 'none' else
           attacks.attacked(plain_aggregation, AttackConfig(attack, hospital, scale)))
  plan = build(task)
  steps = []
  with runtime.execution_context(secure_sums=False):
    state = plan.initialize()
    before = np.concatenate([np.ravel(w) for w in plan.get_model_weights(state).trainable])
    for round_num in (1, 2, 3):
      state = plan.run_round(state, Round(round_num, (hospital,), (hospital,))).state
      after = np.concatenate([np.ravel(w) for w in plan.get_model_weights(state).trainable])
      steps.append(after - before)
      before = after
  return steps


def test_attacks_change_the_attackers_update_as_documented(task):
  honest = _steps(task, 'none')
  np.testing.assert_allclose(_steps(task, 'scaled_update', 10.0)[0], 10.0 * honest[0],
                             rtol=1e-4)
  stale = _steps(task, 'stale')
  np.testing.assert_allclose(stale[0], honest[0], rtol=1e-5)
  np.testing.assert_allclose(stale[1], stale[0], rtol=1e-5)  # Resent, not retrained.
  np.testing.assert_allclose(stale[2], stale[0], rtol=1e-5)
  random = _steps(task, 'random_update', 10.0)[0]
  rms = np.sqrt(np.mean(honest[0] ** 2))
  assert 3 * rms < np.sqrt(np.mean(random ** 2)) < 30 * rms
  assert abs(np.corrcoef(random, honest[0])[0, 1]) < 0.5
  flipped = _steps(task, 'label_flip')[0]
  assert np.dot(flipped, honest[0]) < 0  # Flipped labels pull the other way.


@pytest.mark.parametrize('config,message', [
    (AttackConfig('scaled_update', None), 'attack.attacker=None: name one of'),
    (AttackConfig('none', 'north'), 'attack.attacker=north is set but'),
    (AttackConfig('poison', 'a'), "attack.name='poison'"),
    (AttackConfig('scaled_update', 'a', 0.0), 'attack.scale=0.0'),
])
def test_attack_config_names_the_field(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate(('a', 'b'))


def _toy(n_hospitals=5):
  rng = np.random.default_rng(11)
  arrays = {}
  for k in range(n_hospitals):
    x = rng.normal(size=(40, 4)).astype(np.float32)
    arrays[f'h{k}'] = (x, (x @ np.array([1.0, -1.0, 0.5, 0.0]) > 0).astype(np.int64))
  return FederatedData.from_arrays('toy', arrays, arrays)


def _final_weights(data, robust='none', attack='none'):
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1, client_weighting='uniform'),
                       rounds=3, batch_size=8, eval_every=3, robust=RobustConfig(robust),
                       attack=AttackConfig(attack, 'h0' if attack != 'none' else None))
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('logreg'), (4,), 0)
  plan = training.build_plan(data, keras_model_fn, config, log=lambda _: None)
  with runtime.execution_context(secure_sums=False):
    state = plan.initialize()
    for round_num in (1, 2, 3):
      state = plan.run_round(state, Round(round_num, data.hospitals, data.hospitals)).state
    weights = plan.get_model_weights(state)
  return np.concatenate([np.ravel(w) for w in weights.trainable])


def test_a_scaled_update_moves_fedavg_far_and_the_robust_models_little():
  data = _toy()
  honest = _final_weights(data)
  step = np.linalg.norm(honest - _initial(data))
  attacked = np.linalg.norm(_final_weights(data, attack='scaled_update') - honest)
  assert attacked > 5 * step  # x100 from one of five hospitals: FedAvg is dragged away.
  for robust in ('norm_bound', 'median', 'trimmed_mean'):
    defended = np.linalg.norm(_final_weights(data, robust, 'scaled_update') - honest)
    assert defended < step, (robust, defended, step)
    assert defended < attacked / 10, robust


def _initial(data):
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('logreg'), (4,), 0)
  return np.concatenate([np.ravel(w) for w in keras_model_fn().trainable_weights])


@pytest.mark.parametrize('fields,message', [
    (dict(robust=RobustConfig('median'), secure_agg=SecureAggConfig('masking')),
     'robust.name=median needs each hospital\'s update at the server; secure_agg.mode=masking'),
    (dict(robust=RobustConfig('trimmed_mean'), secure_agg=SecureAggConfig('tff')),
     'secure_agg.mode=tff gives it only their sum'),
    (dict(robust=RobustConfig('norm_bound'),
          privacy=PrivacyConfig('client', noise_multiplier=1.0)),
     'robust.name=norm_bound with privacy.level=client'),
    (dict(algorithm=AlgorithmConfig('local'), robust=RobustConfig('median')),
     'algorithm.name=local is a baseline'),
    (dict(attack=AttackConfig('stale', 'h0'),
          privacy=PrivacyConfig('client', noise_multiplier=1.0)),
     'attack.name=stale is not simulated with privacy.level=client'),
    (dict(attack=AttackConfig('stale', 'h0'), secure_agg=SecureAggConfig('tff')),
     'attack.name=stale with secure_agg.mode=tff: the simulation keeps the attacker\'s first '
     'update on the server, in the clear'),
    (dict(algorithm=AlgorithmConfig('fedprox'), attack=AttackConfig('stale', 'h0')),
     'attack.name=stale: the simulated attacker trains with plain local SGD'),
    (dict(robust=RobustConfig('trimmed_mean', trim=3)),
     'robust.name=trimmed_mean with robust.trim=3 drops 3 update(s) at each end: it needs '
     'more than 6 hospitals reporting per round, and a round has 5'),
    (dict(robust=RobustConfig('trimmed_mean', trim=2), dropouts=1),
     'a round has 4'),
    (dict(robust=RobustConfig('median', norm=1.0)), 'robust.norm=1.0 applies to'),
    (dict(attack=AttackConfig('label_flip', 'h0', scale=5.0)), 'attack.scale=5.0 applies to'),
])
def test_impossible_combinations_are_refused_naming_the_fields(fields, message):
  fields.setdefault('algorithm', AlgorithmConfig('fedavg', client_weighting='uniform'))
  config = TrainConfig(rounds=2, **fields)
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('logreg'), (4,), 0)
  with pytest.raises(ValueError, match=re.escape(message)):
    training.build_plan(_toy(), keras_model_fn, config, log=lambda _: None)


@pytest.mark.parametrize('attack', ['stale', 'label_flip'])
def test_an_attacked_run_resumes_from_its_saved_state(tmp_path, attack):
  """The attack's server-side state (the stored stale update) loads back into
  the structure `initialize` gives (a list, not the tuple a round returned)."""
  data = _toy(3)
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), rounds=2, batch_size=8,
                       attack=AttackConfig(attack, 'h0'))
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('logreg'), (4,), 0)
  first = training.run(data, keras_model_fn, config, str(tmp_path), log=lambda _: None)
  again = training.run(data, keras_model_fn, config, str(tmp_path), log=lambda _: None)
  assert again['status'] == 'completed' and again['rounds_completed'] == 2
  assert again['pooled'] == first['pooled']
