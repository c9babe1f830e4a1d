"""Attacks on the privacy statement of a run: who each epsilon is against, what
is released, the worst case a round can produce, and the adjacency.

Every epsilon is checked against dp_accounting called directly; every "not
released" claim against the files a run writes, with neighbouring datasets.
"""

import csv
import dataclasses
import json
import math
import random

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model
from tff_med.privacy import substitution_bound
from tff_med.privacy.dp_account import DpAccount, PrivacyConfig
from tff_med.secure_agg.config import SecureAggConfig

DELTA = 1e-3


def _data(num_hospitals=4, rows=20, flip=None, preprocessing=None):
  """Toy hospitals h0..; `flip` = (hospital, row): that training label flipped
  (a neighbouring dataset under substitution of one record)."""
  rng = np.random.default_rng(5)
  train, test = {}, {}
  for k in range(num_hospitals):
    x = rng.normal(size=(2 * rows, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    train[f'h{k}'], test[f'h{k}'] = (x[:rows], y[:rows].copy()), (x[rows:], y[rows:])
  if flip:
    hospital, row = flip
    train[hospital][1][row] = 1 - train[hospital][1][row]
  return FederatedData.from_arrays('toy', train, test, preprocessing=preprocessing)


def _keras_model():
  return build_keras_model(ModelConfig('logreg'), (3,), seed=1)


def _config(privacy, rounds=3, clients_per_round=0, client_lr=0.2, batch_size=5):
  return training.TrainConfig(AlgorithmConfig('fedavg', client_lr=client_lr,
                                              client_weighting='uniform'),
                              rounds=rounds, batch_size=batch_size, eval_every=rounds,
                              clients_per_round=clients_per_round, privacy=privacy)


def _dp(privacy, data=None, clients_per_round=0, rounds=10, aggregation='central',
        colluders=0):
  return DpAccount(privacy, AlgorithmConfig('fedavg'), data or _data(10), rounds,
                    clients_per_round, 5, 1, log=lambda line: None,
                    aggregation=aggregation, colluders=colluders)


def _direct(events, delta=DELTA, accountant=None):
  accountant = accountant or dp_accounting.rdp.RdpAccountant()
  for event in events:
    accountant.compose(event)
  return accountant.get_epsilon(delta)


def _seed_everything(seed):
  random.seed(seed)
  np.random.seed(seed)
  tf.keras.utils.set_random_seed(seed)


def test_hospital_cohorts_come_from_os_randomness_not_the_seed():
  """M2: a cohort replayed from the experiment seed would void amplification."""
  privacy = PrivacyConfig('client', noise_multiplier=1.0, target_delta=DELTA)
  draws = []
  for _ in range(2):
    _seed_everything(0)
    dp = _dp(privacy, clients_per_round=5)
    draws.append([tuple(dp.cohort(dp._data.hospitals)) for _ in range(40)])
  assert draws[0] != draws[1]  # Equal with probability 2^-400 if drawn fairly.
  sizes = [len(c) for c in draws[0]]
  assert 0 < np.mean(sizes) < 10 and len(set(sizes)) > 1  # Poisson, not fixed size.


def test_secure_aggregation_epsilon_against_the_server_is_per_hospital_and_unamplified():
  """M2, M4: the server sees who joined; each hospital pays, for each round it
  joined, the Gaussian event of the noise that round really carried. No
  amplification is claimed for anyone: an aborted round shows in the model."""
  sigma, q_hospitals = 2.0, 4
  privacy = PrivacyConfig('client', noise_multiplier=sigma, target_delta=DELTA)
  dp = _dp(privacy, clients_per_round=q_hospitals, aggregation='masking', colluders=1)
  rng = np.random.default_rng(1)
  joined = {h: [] for h in dp._data.hospitals}
  for round_num in range(1, 9):
    cohort = [h for h in dp._data.hospitals if rng.random() < 0.4]
    realised = sigma * math.sqrt(1 + rng.integers(0, 3))  # More survivors: more noise.
    for h in cohort:
      joined[h].append(dp_accounting.GaussianDpEvent(realised))
    dp.record_round(cohort, round_num, server_event=dp_accounting.GaussianDpEvent(realised))
  report = dp.report()
  server = report['adversaries']['server']
  assert 'colluding with up to 1 hospital' in server['who']
  for h, events in joined.items():
    assert server['per_unit'][h]['epsilon'] == pytest.approx(_direct(events), rel=1e-9)
  assert set(report['adversaries']) == {'server'}
  assert report['epsilon_adversary'] == 'server'
  assert report['epsilon'] == max(s['epsilon'] for s in server['per_unit'].values())


def test_central_dp_claims_nothing_against_the_server():
  dp = _dp(PrivacyConfig('client', noise_multiplier=1.0, target_delta=DELTA),
           clients_per_round=5)
  for round_num in range(1, 4):
    dp.record_round(dp.cohort(dp._data.hospitals), round_num)
  report = dp.report()
  assert report['adversaries']['server']['protected'] is False
  assert report['epsilon_adversary'] == 'observers'
  assert 'not protected (central DP' in report['statement']


@pytest.mark.parametrize('secure_agg, clients, message', [
    # M3: TFF's DDP aggregator noises its clip count on the server, after the sum.
    (SecureAggConfig('tff'), 0, 'secure_agg.mode=tff with privacy.level=client is refused'),
    # Review R7: a fixed threshold cannot follow Poisson cohorts of varying size.
    (SecureAggConfig('masking', threshold=3), 3, 'secure_agg.threshold=3 with privacy.level=client'),
])
def test_hospital_level_dp_refuses_what_it_cannot_account(secure_agg, clients, message):
  config = dataclasses.replace(
      _config(PrivacyConfig('client', noise_multiplier=1.0, target_delta=1e-2),
              clients_per_round=clients), secure_agg=secure_agg)
  with pytest.raises(ValueError, match=message):
    training.build_plan(_data(5), _keras_model, config, log=lambda line: None)


def test_dp_refuses_data_scaled_with_statistics_of_the_records():
  """M6: z-scoring with a hospital's own mean and std moves every record when
  one is removed, which no epsilon covers."""
  data = _data(preprocessing={'scaling': 'zscore', 'data_dependent': True,
                              'source': 'per-hospital training mean and std'})
  with pytest.raises(ValueError, match='--scaling=public_ranges'):
    _dp(PrivacyConfig('record', noise_multiplier=1.0, target_delta=DELTA), data=data)


def _released(tmp_path, name, data, privacy, **config):
  out = tmp_path / name
  summary = training.run(data, _keras_model, _config(privacy, **config), output_dir=str(out),
                         log=lambda line: None)
  with open(out / 'metrics.csv') as f:
    rows = list(csv.DictReader(f))
  return summary, rows


def test_under_dp_no_statistic_of_training_records_is_released(tmp_path):
  """M5: neighbouring datasets (one training label flipped) with a learning
  rate so small that the DP model cannot move: every released per-round value
  is the same, and no training metric is released at all."""
  privacy = PrivacyConfig('record', noise_multiplier=10.0, target_delta=DELTA)
  runs = [_released(tmp_path, f'run{k}', _data(flip=('h0', 3) if k else None), privacy,
                    client_lr=1e-9) for k in range(2)]
  (summary, rows), (_, rows_neighbour) = runs
  columns = set(rows[0])
  assert not any(c.startswith('train/') for c in columns)
  released = lambda rows: [{k: v for k, v in r.items() if k != 'round_seconds'} for r in rows]
  assert released(rows) == released(rows_neighbour)
  assert summary['privacy']['released']['training loss, accuracy and AUC'].startswith(
      'not released')
  assert 'not protected' in summary['privacy']['released'][
      'test-set accuracy and AUC per hospital and pooled']
  # The same run without DP does release training metrics that move with the record.
  plain = [_released(tmp_path, f'plain{k}', _data(flip=('h0', 3) if k else None),
                     PrivacyConfig())[1] for k in range(2)]
  assert 'train/accuracy' in plain[0][0]
  assert plain[0][0]['train/loss'] != plain[1][0]['train/loss']


def test_amplified_runs_release_no_cohort_size(tmp_path):
  """M2: releasing how many hospitals joined would reveal the target's draw."""
  summary, rows = _released(tmp_path, 'client', _data(), PrivacyConfig(
      'client', noise_multiplier=1.0, target_delta=DELTA), clients_per_round=2)
  assert summary['privacy']['adversaries']['observers']['amplified_by_hospital_sampling']
  assert not any('clients_in_round' in c or 'survivors' in c for c in rows[0])


def test_statement_names_unit_adjacency_adversary_and_substitution(tmp_path):
  """m2, m6 and the statement of a record-level run."""
  summary, _ = _released(tmp_path, 'record', _data(), PrivacyConfig(
      'record', noise_multiplier=1.5, target_delta=DELTA))
  privacy = summary['privacy']
  eps = privacy['epsilon']
  assert privacy['substitution'] == dict(zip(('epsilon', 'delta'),
                                             substitution_bound(eps, DELTA)))
  assert privacy['unit'] == 'one patient record at one hospital'
  assert 'add or remove' in privacy['adjacency'] and 'replace' in privacy['adjacency']
  assert privacy['epsilon_adversary'] == 'everyone'
  steps = 3 * math.ceil(20 / 5)
  per_hospital = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
      5 / 20, dp_accounting.GaussianDpEvent(1.5)), steps)
  assert eps == pytest.approx(_direct([per_hospital]), rel=1e-6)
  assert privacy['patient_at_every_hospital_epsilon'] == pytest.approx(
      _direct([per_hospital] * 4), rel=1e-6)
  for words in ('a patient with records at several hospitals', 'replaced rather than',
                'the server included'):
    assert words in privacy['statement']
  with open(tmp_path / 'record' / 'summary.json') as f:
    assert json.load(f)['privacy']['released'] == privacy['released']


def test_client_level_budget_is_never_exceeded_with_sampled_hospitals():
  """M1 (central DP): the guard previews TFF's exact event of the next round;
  the observers' events do not depend on the cohort, so it stops after round 4."""
  one = dp_accounting.PoissonSampledDpEvent(0.4, dp_accounting.GaussianDpEvent(0.8))
  after = [_direct([dp_accounting.SelfComposedDpEvent(one, r)], 1e-2) for r in (4, 5)]
  budget = sum(after) / 2
  privacy = PrivacyConfig('client', noise_multiplier=0.8, l2_norm_clip=0.5,
                          target_delta=1e-2, max_epsilon=budget)
  summary = training.run(_data(5), _keras_model,
                         _config(privacy, rounds=12, clients_per_round=2),
                         log=lambda line: None)
  assert summary['stopped_early'] is True and summary['rounds_completed'] == 4
  assert summary['privacy']['epsilon'] == pytest.approx(after[0], rel=1e-6)
  assert summary['privacy']['epsilon'] <= budget


def test_non_private_run_says_so_and_lists_what_it_releases():
  summary = training.run(_data(), _keras_model, _config(PrivacyConfig()),
                         log=lambda line: None)
  assert summary['privacy']['level'] == 'none'
  assert math.isinf(summary['privacy']['epsilon'])
  assert all(v.startswith('not protected') for v in summary['privacy']['released'].values()
             if v)


def _masking_config(privacy, rounds, dropouts):
  return dataclasses.replace(_config(privacy, rounds=rounds), dropouts=dropouts,
                             secure_agg=SecureAggConfig('masking', bits=20, clip=2.0))


@pytest.mark.parametrize('dropouts', [0, 1])
def test_masking_budget_and_calibration_hold_under_dropouts(dropouts):
  """M1: the guard and the calibration use a round's worst case (survivors = t,
  colluders k = t - 2), so dropouts can only leave more noise than planned."""
  data = _data(5)
  sigma, rounds = 3.0, 4
  # A budget of 2.1 rounds at sigma (Gaussians compose by adding 1 / sigma^2).
  budget = _direct([dp_accounting.GaussianDpEvent(sigma / math.sqrt(2.1))], 1e-2)
  summary = training.run(data, _keras_model, _masking_config(PrivacyConfig(
      'client', noise_multiplier=sigma, target_delta=1e-2, max_epsilon=budget), rounds,
      dropouts), log=lambda line: None)
  assert summary['privacy']['epsilon'] <= budget
  # One dropout leaves t = 4 survivors: 1 honest non-target share, the planned
  # sigma, so round 3 could cross. None leaves 2 shares (sigma * sqrt(2)), so
  # 3 rounds cost 1.5 planned ones and round 4 could cross.
  done = 2 if dropouts else 3
  assert summary['stopped_early'] and summary['rounds_completed'] == done
  assert summary['dropouts'] == done * dropouts
  server = summary['privacy']['adversaries']['server']
  assert 'colluding with up to 2 hospital' in server['who']
  realised = sigma * (1 if dropouts else math.sqrt(2)) / math.sqrt(done)
  assert summary['privacy']['epsilon'] == pytest.approx(
      _direct([dp_accounting.GaussianDpEvent(realised)], 1e-2), rel=1e-3)
  assert summary['secure_aggregation']['noise_approximation_tau'] < 1e-6

  calibrated = training.run(data, _keras_model, _masking_config(PrivacyConfig(
      'client', target_epsilon=2.0, target_delta=1e-2), 2, dropouts), log=lambda line: None)
  assert calibrated['privacy']['epsilon'] <= 2.0 + 1e-9


def _spy_cohorts(monkeypatch):
  """Records the size of every cohort drawn (the secret the attacks below want)."""
  sizes, original = [], DpAccount.cohort

  def spy(self, hospitals):
    cohort = original(self, hospitals)
    sizes.append(len(cohort))
    return cohort

  monkeypatch.setattr(DpAccount, 'cohort', spy)
  return sizes


def test_amplified_run_releases_nothing_that_varies_with_the_cohort(tmp_path, monkeypatch):
  """Review F1, F2: per-round bytes, seconds or a skipped (un-noised) round for
  an empty cohort told observers the secret cohort's size. Now every round runs
  TFF's noised aggregation, empty cohorts too, and only epsilon and test metrics
  are released per round."""
  sizes = _spy_cohorts(monkeypatch)
  privacy = PrivacyConfig('client', noise_multiplier=2.0, target_delta=1e-2)
  summary, rows = _released(tmp_path, 'central', _data(3), privacy, rounds=20,
                            clients_per_round=1)
  assert 0 in sizes  # P(no empty cohort in 20 rounds, q = 1/3, 3 hospitals) < 1e-3.
  assert summary['privacy']['adversaries']['observers']['amplified_by_hospital_sampling']
  assert len(rows) == 20
  for column in rows[0]:
    assert column == 'round' or column.startswith(('privacy/', 'eval/')), column
  one = dp_accounting.PoissonSampledDpEvent(1 / 3, dp_accounting.GaussianDpEvent(2.0))
  assert summary['privacy']['epsilon'] == pytest.approx(
      _direct([dp_accounting.SelfComposedDpEvent(one, 20)], 1e-2), rel=1e-6)


def test_masking_claims_no_amplification_and_accounts_aborted_rounds():
  """Review F3: an aborted masking round (visible: the model does not move)
  crashed the accountant as PoissonSampled(NoOp) and leaked the cohort size.
  Masking now claims no amplification; an abort releases nothing."""
  dp = _dp(PrivacyConfig('client', noise_multiplier=2.0, target_delta=1e-2),
           data=_data(5), clients_per_round=3, aggregation='masking', colluders=1)
  dp.record_round(['h0'], 1, server_event=dp_accounting.NoOpDpEvent())
  dp.record_round(['h0', 'h1', 'h2'], 2, server_event=dp_accounting.GaussianDpEvent(2.0))
  report = dp.report()
  assert set(report['adversaries']) == {'server'}
  assert report['adversaries']['server']['per_unit']['h0']['epsilon'] == pytest.approx(
      _direct([dp_accounting.GaussianDpEvent(2.0)], 1e-2), rel=1e-9)


def test_profiles_partition_under_public_ranges_moves_only_the_changed_record():
  """Review F4: the 'profiles' shift used the std of all pooled records; under
  public ranges it is a declared unit, so one changed record moves one row."""
  from tff_med.data import breast_cancer, partition
  rng = np.random.default_rng(0)
  x, y = rng.uniform(-1, 1, size=(60, 4)), np.arange(60) % 2
  train, test = (x[:40], y[:40]), (x[40:], y[40:])
  changed = train[0].copy()
  changed[0, 0] = 1.0
  split = lambda xy, unit: partition.simulate_hospitals(
      xy, test, 3, 'profiles', 0, profile_features=[0], shift_unit=unit)[1]
  moved = lambda a, b: sum(int((~np.isclose(a[h][0], b[h][0]).all(axis=1)).sum()) for h in a)
  assert moved(split(train, 0.3), split((changed, train[1]), 0.3)) == 1
  assert moved(split(train, None), split((changed, train[1]), None)) > 10  # The old way.
  data = breast_cancer.load(3, 'profiles', 0, scaling='public_ranges')
  assert 'x 0.3' in data.description and '(prevalence' not in data.description


def test_dp_sgd_noise_does_not_follow_the_experiment_seed(tmp_path):
  """Brief: privacy-relevant randomness comes from the OS. Two record-level runs
  after the same global seeding (Python, numpy, TensorFlow) train different
  models: the DP-SGD sampling and noise are not replayable from the seed."""
  weights = []
  for k in range(2):
    _seed_everything(0)
    training.run(_data(3), _keras_model, _config(PrivacyConfig(
        'record', noise_multiplier=1.0, target_delta=DELTA), rounds=1),
                 output_dir=str(tmp_path / f'run{k}'), log=lambda line: None)
    weights.append(tf.keras.models.load_model(tmp_path / f'run{k}' / 'saved_model',
                                              compile=False).get_weights()[0])
  assert not np.allclose(weights[0], weights[1])


@pytest.mark.parametrize('level, secure_agg', [('record', 'none'), ('client', 'none'),
                                               ('client', 'masking')])
def test_no_training_statistic_reaches_the_server_under_dp(monkeypatch, level, secure_agg):
  """Review R1: TFF's builders sum each hospital's training loss, accuracy and
  AUC to the server in the clear. Under DP the server now gets none: the round
  metrics before any release filter hold no 'train'."""
  seen, original = [], DpAccount.releasable

  def spy(self, metrics):
    seen.append(metrics)
    return original(self, metrics)

  monkeypatch.setattr(DpAccount, 'releasable', spy)
  config = dataclasses.replace(
      _config(PrivacyConfig(level, noise_multiplier=2.0, target_delta=1e-3), rounds=2),
      secure_agg=SecureAggConfig(secure_agg, bits=20, clip=2.0))
  training.run(_data(5), _keras_model, config, log=lambda line: None)
  assert len(seen) == 2 and all('train' not in m for m in seen), seen


def test_masking_sizes_every_round_for_the_same_coalition():
  """Review R3: with Poisson cohorts each round's threshold varies; the noise
  is sized for the run's fixed k (t - 2 of the expected cohort), and a round
  too small to keep an honest share beside k colluders aborts."""
  from tff_med.secure_agg.masking import SecureAggregationAborted
  config = dataclasses.replace(
      _config(PrivacyConfig('client', noise_multiplier=2.0, target_delta=1e-2),
              clients_per_round=6), secure_agg=SecureAggConfig('masking', bits=24, clip=2.0))
  data = _data(9)
  plan = training.build_plan(data, _keras_model, config, log=lambda line: None)
  assert plan.dp.colluders == 2  # t = 4 for 6 expected hospitals.
  process = plan.inner
  for cohort in (3, 4):  # t = 2, 3: no honest share beside 2 colluders.
    with pytest.raises(SecureAggregationAborted, match='keeps no honest noise share'):
      process._noise.share_scale(cohort)
  # 5 hospitals: t = 4, one honest non-target share at the threshold: z.
  assert process.round_noise_multiplier(4, 5) == pytest.approx(2.0)
  assert process.round_noise_multiplier(5, 5) == pytest.approx(2.0 * math.sqrt(2))


def test_amplified_run_releases_no_timing(tmp_path):
  """Review R2: TensorBoard event times, progress lines and wall_seconds gave
  away each round's duration, hence the secret cohort's size. Under
  amplification every release is held to the end and no time is printed."""
  lines = []
  summary = training.run(_data(3), _keras_model, _config(
      PrivacyConfig('client', noise_multiplier=2.0, target_delta=1e-2), rounds=8,
      clients_per_round=1), output_dir=str(tmp_path), log=lines.append)
  assert summary['privacy']['adversaries']['observers']['amplified_by_hospital_sampling']
  assert 'wall_seconds' not in summary
  assert len([l for l in lines if l.startswith('round')]) == 8
  assert not any('elapsed' in l or 'left' in l for l in lines)
  times = []
  for path in tmp_path.glob('tensorboard/**/events*'):
    times += [e.wall_time for e in tf.compat.v1.train.summary_iterator(str(path))
              if any(v.tag == 'privacy/epsilon' for v in e.summary.value)]
  assert len(times) == 8 and max(times) - min(times) < 0.5  # Written together at the end.


def test_audit_refuses_its_bound_on_official_train_test_splits(data_dir):
  """Review R4: MedMNIST's official train and test sets differ in prevalence, so
  a model that never saw a record got a '95%' bound above 0. Their
  FederatedData says the split is not random, and the audit refuses a bound."""
  from tff_med.audit import membership
  from tff_med.data import medmnist
  data = medmnist.load(data_dir, 'breastmnist', 2, 'iid', 0)
  assert data.random_split is False
  inp = tf.keras.Input((28, 28, 1))
  constant = tf.keras.Model(inp, tf.keras.layers.Lambda(
      lambda x: tf.ones([tf.shape(x)[0], 1]))(inp))
  result = membership.audit(constant, data,
                            attack_types=(membership.AttackType.THRESHOLD_ATTACK,))
  for audit in [result['overall'], *result['per_hospital'].values()]:
    assert math.isnan(audit['epsilon_lower_bound'])
    assert 'not a random split' in audit['epsilon_lower_bound_details']['refused']
