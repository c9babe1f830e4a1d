"""The round loop over pluggable mechanisms: a mechanism written here (no library
change) trains under record-level DP; dropouts and min_clients in every mode,
with the accounting of skipped rounds checked against dp_accounting; resume and
interrupts in-process (the subprocess kills are in test_resume.py)."""

import dataclasses
import json
import math
import os
import signal

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms.round_plan import PlanWrapper
from tff_med.models import ModelConfig, build_keras_model
from tff_med.privacy.dp_account import PrivacyConfig
from tff_med.secure_agg.config import SecureAggConfig

SIZES = {'h0': 12, 'h1': 16, 'h2': 20, 'h3': 24}
BATCH = 4


def _data():
  rng = np.random.default_rng(3)
  arrays = {}
  for h, n in SIZES.items():
    x = rng.normal(size=(n, 3)).astype(np.float32)
    arrays[h] = (x, (x[:, 0] > 0).astype(np.int64))
  return FederatedData.from_arrays('toy', arrays, arrays)


def _keras():
  return build_keras_model(ModelConfig('logreg'), (3,), seed=1)


def _config(rounds=3, **fields):
  return training.TrainConfig(AlgorithmConfig('fedavg', client_lr=0.3,
                                              client_weighting='uniform'),
                              rounds=rounds, batch_size=BATCH, eval_every=rounds, **fields)


def _quiet(line):
  del line


class ServerUpdateClipper(PlanWrapper):
  """A toy mechanism: the server clips each round's change of the global model
  to L2 norm `clip` (post-processing, so DP guarantees hold unchanged)."""

  def __init__(self, inner, clip):
    super().__init__(inner)
    self.clip, self.norms = clip, []

  def run_round(self, state, round_):
    before = self.get_model_weights(state)
    result = self.inner.run_round(state, round_)
    after = self.get_model_weights(result.state)
    delta = [np.asarray(a) - np.asarray(b) for a, b in zip(after.trainable, before.trainable)]
    norm = math.sqrt(sum(float(np.sum(d**2)) for d in delta))
    scale = min(1.0, self.clip / norm) if norm else 1.0
    clipped = [np.asarray(b) + scale * d for b, d in zip(before.trainable, delta)]
    self.norms.append(scale * norm)
    weights = after.__class__(trainable=clipped, non_trainable=after.non_trainable)
    return dataclasses.replace(result, state=self.set_model_weights(result.state, weights))


def test_a_mechanism_written_here_trains_under_record_level_dp(tmp_path):
  data, clip = _data(), 0.01
  config = _config(privacy=PrivacyConfig('record', noise_multiplier=1.0, target_delta=1e-3))
  plan = ServerUpdateClipper(training.build_plan(data, _keras, config, log=_quiet), clip)
  summary = training.run(data, _keras, config, str(tmp_path), plan=plan, log=_quiet)
  reference = training.run(data, _keras, config, log=_quiet)
  assert summary['status'] == 'completed' and len(plan.norms) == 3
  assert all(n <= clip + 1e-6 for n in plan.norms) and max(plan.norms) > clip / 2
  # The saved model moved at most 3 clipped steps from its initial weights.
  saved = tf.keras.models.load_model(tmp_path / 'saved_model', compile=False)
  moved = np.sqrt(sum(np.sum((a - b)**2) for a, b in zip(saved.get_weights(),
                                                          _keras().get_weights())))
  assert moved <= 3 * clip + 1e-5
  # The wrapper changed no accounting: epsilon per hospital as without it.
  assert summary['privacy']['per_hospital'] == reference['privacy']['per_hospital']
  with open(tmp_path / 'program_state' / 'run.json') as f:
    assert json.load(f)['plan'] == ['ServerUpdateClipper', 'RecordLevelDp', 'LearningPlan']


class _ScriptedCohorts(PlanWrapper):
  """Cohorts from a script, one per round (the loop still draws dropouts)."""

  def __init__(self, inner, cohorts):
    super().__init__(inner)
    self._cohorts = list(cohorts)

  def cohort(self, hospitals, rng):
    return list(self._cohorts.pop(0))


def _dp_sgd_epsilon(n, rounds):
  steps = math.ceil(n / BATCH) * rounds
  event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
      BATCH / n, dp_accounting.GaussianDpEvent(1.0)), steps)
  return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-3)


@pytest.mark.parametrize('secure_agg', ['none', 'masking'])
def test_skipped_rounds_and_dropouts_are_accounted_as_released(tmp_path, secure_agg):
  """Round 2's cohort of 2 with 1 dropout leaves 1 report < min_clients = 3:
  skipped, nothing released, nobody charged; in rounds 1 and 3 the hospital that
  dropped out is not charged either. Each hospital's epsilon equals
  dp_accounting's for the rounds it really reported in."""
  data = _data()
  config = _config(dropouts=1, min_clients=3,
                   privacy=PrivacyConfig('record', noise_multiplier=1.0, target_delta=1e-3),
                   secure_agg=SecureAggConfig(secure_agg, bits=20, clip=2.0)
                   if secure_agg != 'none' else SecureAggConfig())
  everyone = tuple(SIZES)
  plan = _ScriptedCohorts(training.build_plan(data, _keras, config, log=_quiet),
                          [everyone, ('h0', 'h1'), everyone])
  summary = training.run(data, _keras, config, str(tmp_path), plan=plan, log=_quiet)
  assert summary['skipped_rounds'] == 1 and summary['dropouts'] == 3
  with open(tmp_path / 'audit_log.jsonl') as f:
    rounds = [line for line in map(json.loads, f) if line['event'] == 'round']
  assert [(r['round'], r['applied'], len(r['cohort']), len(r['reporting']), len(r['dropouts']))
          for r in rounds] == [(1, True, 4, 3, 1), (2, False, 2, 1, 1), (3, True, 4, 3, 1)]
  per_hospital = summary['privacy']['per_hospital']
  reported = {h: per_hospital[h]['steps'] // math.ceil(n / BATCH) for h, n in SIZES.items()}
  assert sum(reported.values()) == 6  # 3 + 0 + 3 reports: dropouts are not charged.
  for h, n in SIZES.items():
    assert per_hospital[h]['epsilon'] == pytest.approx(
        _dp_sgd_epsilon(n, reported[h]) if reported[h] else 0.0, rel=1e-9)
  with open(tmp_path / 'metrics.csv') as f:
    header, *rows = f.read().splitlines()
  applied = header.split(',').index('applied')
  assert [r.split(',')[applied] for r in rows] == ['1', '0', '1']


@pytest.mark.parametrize('mode', ['none', 'tff'])
def test_dropouts_and_min_clients_in_runs_without_dp(mode):
  """Without DP too: the dropped hospitals' updates never reach the aggregate, so
  a round whose only reporting hospital is h3 equals h3's own step."""
  data = _data()
  secure = SecureAggConfig(mode, bits=24, clip=4.0) if mode != 'none' else SecureAggConfig()
  config = _config(rounds=1, dropouts=1, secure_agg=secure)
  none_drop = dataclasses.replace(config, dropouts=0)
  summaries = [training.run(data, _keras, c, plan=_ScriptedCohorts(
      training.build_plan(data, _keras, c, log=_quiet), [cohort]), log=_quiet)
               for c, cohort in ((config, ('h2', 'h3')), (none_drop, ('h3',)),
                                 (none_drop, ('h2',)))]
  assert summaries[0]['dropouts'] == 1
  # Whichever of h2, h3 the seed dropped, the model is that of the other alone.
  assert summaries[0]['per_hospital'] in (summaries[1]['per_hospital'],
                                          summaries[2]['per_hospital'])
  skipped = training.run(data, _keras, dataclasses.replace(config, min_clients=2),
                         plan=_ScriptedCohorts(training.build_plan(
                             data, _keras, dataclasses.replace(config, min_clients=2),
                             log=_quiet), [('h2', 'h3')]), log=_quiet)
  assert skipped['skipped_rounds'] == 1


def test_hides_cohort_refuses_dropouts_and_min_clients():
  config = _config(clients_per_round=2, dropouts=1,
                   privacy=PrivacyConfig('client', noise_multiplier=1.0, target_delta=1e-2))
  with pytest.raises(ValueError, match='dropouts=1 and min_clients=0 with privacy.level=client'):
    training.build_plan(_data(), _keras, config, log=_quiet)


class _SignalAt(PlanWrapper):
  """Sends this process `signum` during round `at` (as a user's Ctrl-C would)."""

  def __init__(self, inner, at, signum=signal.SIGINT, twice=False):
    super().__init__(inner)
    self._at, self._signum, self._twice = at, signum, twice

  def run_round(self, state, round_):
    if round_.number == self._at:
      os.kill(os.getpid(), self._signum)
      if self._twice:
        os.kill(os.getpid(), self._signum)
    return self.inner.run_round(state, round_)


@pytest.mark.parametrize('signum, twice', [(signal.SIGINT, False), (signal.SIGTERM, False),
                                           (signal.SIGINT, True)])
def test_interrupt_saves_state_and_resume_equals_an_uninterrupted_run(tmp_path, signum, twice):
  """The first signal ends the run after the current round, a second at once;
  either way summary.json says interrupted and no model is saved, and the same
  call continues to the weights of a run never cut (masking with a dropout)."""
  data = _data()
  config = _config(rounds=4, dropouts=1, secure_agg=SecureAggConfig('masking', bits=24,
                                                                    clip=4.0))
  reference = tmp_path / 'reference'
  training.run(data, _keras, config, str(reference), log=_quiet)
  cut = tmp_path / 'cut'
  handler = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup or `cmd &`.
  plan = _SignalAt(training.build_plan(data, _keras, config, log=_quiet), 2, signum, twice)
  summary = training.run(data, _keras, config, str(cut), plan=plan, log=_quiet)
  assert summary['status'] == 'interrupted'
  assert summary['rounds_completed'] == (1 if twice else 2)
  with open(cut / 'summary.json') as f:
    assert json.load(f)['status'] == 'interrupted'
  assert not (cut / 'saved_model').exists()
  assert signal.getsignal(signal.SIGINT) is handler  # Put back.
  resumed = training.run(data, _keras, config, str(cut), log=_quiet, plan=_SignalAt(
      training.build_plan(data, _keras, config, log=_quiet), at=None))  # Same chain.
  assert resumed['status'] == 'completed' and resumed['sessions'] == 2
  # Wall seconds add up over sessions.
  assert resumed['wall_seconds'] > summary['wall_seconds'] > 0
  weights = [tf.keras.models.load_model(d / 'saved_model', compile=False).get_weights()
             for d in (reference, cut)]
  for a, b in zip(*weights):
    np.testing.assert_allclose(a, b, atol=1e-6)
  with open(cut / 'audit_log.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert [l['round'] for l in lines if l['event'] == 'round'] == [1, 2, 3, 4]
  assert [l['event'] for l in lines if l['event'] not in ('round', 'release', 'model_saved')
          ] == ['started', 'interrupted', 'resumed', 'completed']
  # A third call on the finished folder trains nothing and still counts the
  # rounds' time (it reported ~0 s).
  again = training.run(data, _keras, config, str(cut), log=_quiet, plan=_SignalAt(
      training.build_plan(data, _keras, config, log=_quiet), at=None))
  assert again['wall_seconds'] > summary['wall_seconds']


def test_resume_refuses_a_different_config_naming_the_fields(tmp_path):
  data = _data()
  training.run(data, _keras, _config(rounds=2), str(tmp_path), log=_quiet)
  with pytest.raises(ValueError, match=r'differing fields: eval_every \(saved 2, now 3\); '
                                       r'rounds \(saved 2, now 3\)'):
    training.run(data, _keras, _config(rounds=3), str(tmp_path), log=_quiet)
  with pytest.raises(ValueError,
                     match=r'holds the saved state of a run \(program state version 2\)'):
    training.run(data, _keras, _config(rounds=2), str(tmp_path), log=_quiet, resume=False)
  again = training.run(data, _keras, _config(rounds=3), str(tmp_path), log=_quiet,
                       overwrite=True)
  assert again['status'] == 'completed' and again['sessions'] == 1
  with open(tmp_path / 'metrics.csv') as f:
    assert len(f.read().splitlines()) == 1 + 3


@pytest.mark.parametrize('aggregator, message', [
    ('masking', 'secure_agg.mode=masking sums masked updates itself'),
    ('tff', 'secure_agg.mode=tff sets the aggregator itself'),
    ('client', 'privacy.level=client builds its own DP aggregator'),
])
def test_a_user_aggregator_that_conflicts_gets_a_clear_error(aggregator, message):
  fields = ({'privacy': PrivacyConfig('client', noise_multiplier=1.0, target_delta=1e-2)}
            if aggregator == 'client' else {'secure_agg': SecureAggConfig(aggregator)})
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=message):
    training.build_plan(_data(), _keras, _config(**fields), log=_quiet,
                        aggregator=tff.aggregators.MeanFactory())
