"""DP training runs: budget guard, schedules, hospital-level accounting, flag errors.

Every epsilon is checked against dp_accounting called directly on events built
here by hand from the run's sizes.
"""

import json
import math

import dp_accounting
import numpy as np
import pytest

from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model
from tff_med.privacy.dp_account import PrivacyConfig

SIZES = {'small': 12, 'medium': 25, 'large': 40}
DELTA = 1e-3


def _data(sizes=SIZES):
  rng = np.random.default_rng(5)
  arrays = {}
  for h, n in sizes.items():
    x = rng.normal(size=(n, 3)).astype(np.float32)
    arrays[h] = (x, (x[:, 0] > 0).astype(np.int64))
  return FederatedData.from_arrays('toy', arrays, arrays)


def _keras_model():
  return build_keras_model(ModelConfig('logreg'), (3,), seed=1)


def _run(privacy, rounds=4, batch_size=5, clients_per_round=0, data=None, output_dir=None):
  config = training.TrainConfig(AlgorithmConfig('fedavg', client_lr=0.2), rounds=rounds,
                                batch_size=batch_size, eval_every=rounds,
                                clients_per_round=clients_per_round, privacy=privacy)
  return training.run(data or _data(), _keras_model, config, output_dir=output_dir,
                      log=lambda line: None)


def _record_epsilon(n, batch_size, sigma, rounds):
  """dp_accounting directly: Poisson rate b/n, ceil(n/b) steps per round."""
  steps = math.ceil(n / batch_size) * rounds
  event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
      batch_size / n, dp_accounting.GaussianDpEvent(sigma)), steps)
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(event)
  return accountant.get_epsilon(DELTA)


def test_record_level_epsilon_per_hospital_matches_dp_accounting():
  summary = _run(PrivacyConfig('record', noise_multiplier=1.5, target_delta=DELTA))
  privacy = summary['privacy']
  for h, n in SIZES.items():
    assert privacy['per_hospital'][h]['epsilon'] == pytest.approx(
        _record_epsilon(n, 5, 1.5, 4), rel=1e-6)
    assert privacy['per_hospital'][h]['steps'] == 4 * math.ceil(n / 5)
    assert privacy['per_hospital'][h]['sampling_rate'] == pytest.approx(5 / n)
  assert privacy['epsilon'] == privacy['per_hospital']['small']['epsilon']  # The worst.
  assert summary['stopped_early'] is False


def test_budget_guard_stops_before_the_round_that_would_exceed(tmp_path):
  sigma, budget = 1.5, None
  per_round = [max(_record_epsilon(n, 5, sigma, r) for n in SIZES.values())
               for r in range(1, 9)]
  budget = (per_round[4] + per_round[5]) / 2  # Round 6 would cross it.
  summary = _run(PrivacyConfig('record', noise_multiplier=sigma, target_delta=DELTA,
                               max_epsilon=budget), rounds=8, output_dir=str(tmp_path))
  assert summary['stopped_early'] is True and summary['rounds_completed'] == 5
  assert 'round 6' in summary['reason'] and 'privacy.max_epsilon' in summary['reason']
  assert summary['privacy']['epsilon'] <= budget
  assert summary['privacy']['epsilon'] == pytest.approx(per_round[4], rel=1e-6)
  with open(tmp_path / 'summary.json') as f:
    assert json.load(f)['stopped_early'] is True
  assert (tmp_path / 'saved_model').is_dir()


@pytest.mark.parametrize('schedule,every', [('first_round', 1), ('every_n', 2)])
def test_unnoised_rounds_make_epsilon_infinite(schedule, every, tmp_path):
  summary = _run(PrivacyConfig('record', noise_multiplier=2.0, target_delta=DELTA,
                               schedule=schedule, every=every), rounds=3,
                 output_dir=str(tmp_path))
  assert math.isinf(summary['privacy']['epsilon'])
  assert 'un-noised' in summary['privacy']['statement']
  assert 'infinite' in summary['privacy']['statement']
  unnoised = 2 if schedule == 'first_round' else 1  # Rounds 2-3, or round 2 only.
  assert all(c == unnoised for c in summary['privacy']['non_private_rounds'].values())
  with open(tmp_path / 'summary.json') as f:
    assert json.load(f)['privacy']['epsilon'] == 'inf'


def test_hospital_level_with_poisson_sampled_hospitals_matches_dp_accounting():
  sizes = {f'h{k}': 20 for k in range(5)}
  summary = _run(PrivacyConfig('client', noise_multiplier=0.8, l2_norm_clip=0.5,
                               target_delta=1e-2, accountant='pld'),
                 rounds=3, clients_per_round=2, data=_data(sizes))
  accountant = dp_accounting.pld.PLDAccountant()
  accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
      0.4, dp_accounting.GaussianDpEvent(0.8)), 3))
  assert summary['privacy']['epsilon'] == pytest.approx(accountant.get_epsilon(1e-2), rel=1e-6)
  assert summary['privacy']['level'] == 'client'


def test_target_epsilon_calibrates_the_noise():
  summary = _run(PrivacyConfig('record', target_epsilon=2.0, target_delta=DELTA), rounds=2)
  sigma = summary['privacy']['noise_multiplier']
  assert _record_epsilon(12, 5, sigma, 2) <= 2.0 + 1e-9  # 'small' is the worst hospital.
  assert _record_epsilon(12, 5, sigma * 0.97, 2) > 2.0  # Smallest such noise.
  assert summary['privacy']['epsilon'] == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize('privacy,message', [
    (PrivacyConfig('record', noise_multiplier=1.0, target_delta=0.05), "'large' has 40"),
    (PrivacyConfig('record', noise_multiplier=1.0, target_epsilon=1.0), 'exactly one of'),
    (PrivacyConfig('client', noise_multiplier=0.5, clipping='adaptive'),
     'privacy.clipping=fixed'),
    (PrivacyConfig('client', noise_multiplier=1.0, schedule='first_round'),
     'privacy.schedule=first_round applies to privacy.level=record'),
])
def test_bad_privacy_flags_fail_before_training(privacy, message):
  with pytest.raises(ValueError, match=message):
    training.build_plan(_data(), _keras_model, training.TrainConfig(privacy=privacy),
                        log=lambda line: None)
