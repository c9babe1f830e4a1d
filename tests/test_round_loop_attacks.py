"""Attacks on the round loop of 184874f (dropouts, min_clients, program state,
resume, interrupts): each test is a way in which a privacy claim of the README
was false with the new loop, demonstrated on toy data.

- A: under amplification (`hides_cohort`) the progress lines were printed as
  each round ended, so their arrival times gave away each round's duration,
  hence the secret cohort's size; the README says they are printed after the
  last round.
- B: a round's progress line, with the test metrics of the model it produced,
  was printed before that round's program state (and so its DP event) was
  saved: a process killed just after the line reruns the round with fresh
  noise and charges it once, although a function of the first model already
  left the process.
- C: a hospital that drops out under masking "trains and masks,
  then never sends", yet its training loss, accuracy and AUC are summed into
  the round's released training statistics (runs without DP only: under DP no
  statistic is computed).
- D: program state behind the audit log (its newest version, or the whole
  folder, deleted) was resumed or restarted silently: rounds already released
  were trained again with fresh noise and charged once, and their new
  releases were dropped as duplicates.
- E: under amplification the audit log's `started` entry was written before
  training and every other entry after it, and TensorBoard's event file was
  created at start: the gap between their times timed the training, which
  grows with the secret cohorts (a hospital with more records trains longer).
(A round cut after its hospitals trained but before its state was saved is
trained again and charged once: in this single-process simulation its
aggregate never left the process; README "Resuming and interrupting".)
"""

import datetime
import glob
import json
import math
import os
import re
import shutil
import time

import pytest
import tensorflow as tf

from tff_med import outputs, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.mechanisms.round_plan import PlanWrapper
from tff_med.personalization import PersonalizeConfig
from tff_med.privacy.dp_account import PrivacyConfig
from tff_med.secure_agg.config import SecureAggConfig

from test_round_loop import BATCH, SIZES, _data, _keras, _quiet  # The same toy study.

RECORD_DP = PrivacyConfig('record', noise_multiplier=1.0, target_delta=1e-3)


def _config(rounds=3, eval_every=None, **fields):
  return training.TrainConfig(AlgorithmConfig('fedavg', client_lr=0.3,
                                              client_weighting='uniform'),
                              rounds=rounds, batch_size=BATCH,
                              eval_every=eval_every or rounds, **fields)


class _Killed(BaseException):
  """The process dying at that point (as SIGKILL would): nothing catches it."""


class _Recorder(PlanWrapper):
  """Records each round that trains (number, reporting hospitals, training
  metrics) and how many progress lines `lines` held when it started."""

  def __init__(self, inner, runs, lines=None, cohorts=None):
    super().__init__(inner)
    self.runs, self.lines, self._cohorts = runs, lines, list(cohorts or [])
    self.round_lines_seen = []

  def cohort(self, hospitals, rng):
    if self._cohorts:
      return list(self._cohorts.pop(0))
    return self.inner.cohort(hospitals, rng)

  def run_round(self, state, round_):
    if self.lines is not None:
      self.round_lines_seen.append(sum(l.startswith('round') for l in self.lines))
    result = self.inner.run_round(state, round_)
    self.runs.append((round_.number, round_.reporting, result.metrics.get('train')))
    return result


def _steps(n):
  return math.ceil(n / BATCH)


def test_a_amplified_run_prints_no_round_line_until_the_last_round_ran():
  """The README: an amplified run "prints its progress lines then [after the
  last round], without times". A line printed as each round ends times it."""
  lines, runs = [], []
  config = _config(rounds=4, clients_per_round=1,
                   privacy=PrivacyConfig('client', noise_multiplier=2.0, target_delta=1e-2))
  plan = _Recorder(training.build_plan(_data(), _keras, config, log=_quiet), runs, lines)
  assert plan.hides_cohort
  training.run(_data(), _keras, config, plan=plan, log=lines.append)
  assert plan.round_lines_seen == [0, 0, 0, 0]  # Nothing printed while rounds ran.
  assert len([l for l in lines if l.startswith('round')]) == 4
  assert not any('elapsed' in l for l in lines)


def test_b_no_output_of_a_round_leaves_before_its_ledger_is_saved(tmp_path):
  """Record-level DP, test metrics every round. The process dies right after
  the first line that carries round 2's test metrics (a function of round 2's
  noised model) reaches the log. Rerun, round 2 must not train again: its
  model already left the process, so a second, freshly noised round 2 would
  be a release the ledger (which charges round 2 once) never counts."""
  data, runs, lines = _data(), [], []
  config = _config(rounds=3, eval_every=1, privacy=RECORD_DP)

  def dies_after_round_2_metrics(line):
    lines.append(line)
    if re.search(r'round +2\b', line) and 'pooled acc' in line:
      raise _Killed

  plan = _Recorder(training.build_plan(data, _keras, config, log=_quiet), runs)
  with pytest.raises(_Killed):
    training.run(data, _keras, config, str(tmp_path), plan=plan, log=dies_after_round_2_metrics)
  assert [r for r, _, _ in runs] == [1, 2]
  plan = _Recorder(training.build_plan(data, _keras, config, log=_quiet), runs)
  summary = training.run(data, _keras, config, str(tmp_path), plan=plan, log=_quiet)
  assert summary['status'] == 'completed'
  # Charged: three rounds of every hospital.
  assert all(v['steps'] == 3 * _steps(SIZES[h])
             for h, v in summary['privacy']['per_hospital'].items())
  # Trained and released: round 2 once, as charged.
  assert [r for r, _, _ in runs] == [1, 2, 3]


def test_c_a_hospital_that_drops_out_under_masking_sends_no_training_statistics():
  """Masking without DP: a cohort of three with one dropout. The released
  training statistics must be those of the two hospitals that reported (as
  when only those two form the cohort), not of all three."""
  data = _data()
  secure = SecureAggConfig('masking', bits=24, clip=4.0)
  config = _config(rounds=1, dropouts=1, secure_agg=secure)
  runs = []
  plan = _Recorder(training.build_plan(data, _keras, config, log=_quiet), runs,
                   cohorts=[('h1', 'h2', 'h3')])
  training.run(data, _keras, config, plan=plan, log=_quiet)
  (_, reporting, with_dropout), = runs
  assert len(reporting) == 2 and with_dropout is not None
  reference = _config(rounds=1, secure_agg=secure)
  plan = _Recorder(training.build_plan(data, _keras, reference, log=_quiet), runs,
                   cohorts=[reporting])
  training.run(data, _keras, reference, plan=plan, log=_quiet)
  reported_only = runs[-1][2]
  for name in ('loss', 'accuracy', 'auc'):
    assert with_dropout[name] == pytest.approx(reported_only[name], rel=1e-5), name


@pytest.mark.parametrize('deleted', ['program_state/program_state_3', 'program_state'])
def test_d_state_behind_the_audit_of_released_rounds_is_refused(tmp_path, deleted):
  """A finished record-level run; its newest program state (or all of it) is
  deleted, then the same command runs again. Rounds that the audit log shows as
  released would be trained again with fresh noise and charged once more only
  in a ledger that forgot them: refuse, naming the rounds, unless overwrite."""
  data = _data()
  config = _config(rounds=3, privacy=RECORD_DP)
  runs = []
  recorded = lambda: _Recorder(training.build_plan(data, _keras, config, log=_quiet), runs)
  training.run(data, _keras, config, str(tmp_path), plan=recorded(), log=_quiet)
  shutil.rmtree(tmp_path / deleted)
  with pytest.raises(ValueError, match='audit_log.jsonl records releases after program '
                     'state version 3'):
    training.run(data, _keras, config, str(tmp_path), plan=recorded(), log=_quiet)
  assert [r for r, _, _ in runs] == [1, 2, 3]  # Nothing trained again.
  summary = training.run(data, _keras, config, str(tmp_path), log=_quiet, overwrite=True)
  assert summary['status'] == 'completed' and summary['sessions'] == 1


def test_d_state_behind_the_audit_of_a_personalised_release_is_refused(tmp_path, monkeypatch):
  """Record-level DP with fine-tuning: the process dies while the personalised
  models are saved, after the first one left; then the newest program state
  (which holds the fine-tuning's write-ahead charge) is deleted. Resumed from
  the older state the run would fine-tune again with fresh noise and charge it
  once: refuse."""
  data = _data()
  config = _config(rounds=2, privacy=RECORD_DP,
                   personalize=PersonalizeConfig('finetune', epochs=1))
  save_model, saved = outputs.RunOutputs.save_model, []

  def dies_at_the_second_personalised_model(self, model, hospital=None, folder='saved_model'):
    if folder == 'personalized_model':
      saved.append(hospital)
      if len(saved) == 2:
        raise _Killed
    return save_model(self, model, hospital, folder)

  monkeypatch.setattr(outputs.RunOutputs, 'save_model', dies_at_the_second_personalised_model)
  with pytest.raises(_Killed):
    training.run(data, _keras, config, str(tmp_path), log=_quiet)
  newest = max(os.listdir(tmp_path / 'program_state'),
               key=lambda name: int(re.sub(r'\D', '', name) or 0))
  shutil.rmtree(tmp_path / 'program_state' / newest)
  monkeypatch.setattr(outputs.RunOutputs, 'save_model', save_model)
  with pytest.raises(ValueError, match='records releases after program state version 3'):
    training.run(data, _keras, config, str(tmp_path), log=_quiet)


class _LastRoundEnd(PlanWrapper):
  """Sleeps in each round (as training a cohort takes time) and records when
  the last round ended."""
  ended = 0.0

  def run_round(self, state, round_):
    time.sleep(0.3)
    result = self.inner.run_round(state, round_)
    self.ended = time.time()
    return result


def test_e_under_a_hidden_cohort_no_released_time_is_earlier_than_the_last_round(tmp_path):
  config = _config(rounds=3, clients_per_round=2,
                   privacy=PrivacyConfig('client', noise_multiplier=1.0, target_delta=1e-2))
  plan = _LastRoundEnd(training.build_plan(_data(), _keras, config, log=_quiet))
  assert plan.hides_cohort
  started = time.time()
  training.run(_data(), _keras, config, str(tmp_path), plan=plan, log=_quiet)
  assert plan.ended - started > 0.9
  with open(tmp_path / 'audit_log.jsonl') as f:
    entries = [json.loads(line) for line in f]
  assert [e['event'] for e in entries][:2] == ['started', 'round']
  times = [datetime.datetime.fromisoformat(e['time'].replace('Z', '+00:00')).timestamp()
           for e in entries]
  assert min(times) >= plan.ended - 0.01
  events = glob.glob(str(tmp_path / 'tensorboard' / '**' / '*tfevents*'), recursive=True)
  walls = [e.wall_time for path in events for e in tf.compat.v1.train.summary_iterator(path)]
  # The file-version event's wall time is whole seconds (TF writes int(time())).
  assert walls and min(walls) >= math.floor(plan.ended - 0.01)
  for path in events:  # The event file's name carries its creation time too.
    assert int(re.search(r'tfevents\.(\d+)\.', path).group(1)) >= int(plan.ended)
