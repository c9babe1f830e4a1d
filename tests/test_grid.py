"""tff_med.grid: every setting planned before any training, run folders, summaries;
and the grid binaries end to end (experiments.compare) and on bad flags."""

import json
import os
import subprocess
import sys
import types

import pytest

from tff_med import grid
from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig


class _FakePlan(str):
  """A fake plan: its name, and the context it asks for."""
  secure_sums = False


@pytest.fixture
def calls(monkeypatch):
  """Replaces training.build_plan and training.run by fakes that record calls."""
  record = []

  def build_plan(data, keras_model_fn, config, aggregator=None, log=print):
    record.append(('plan', data, config.algorithm.name, config.seed))
    if config.rounds < 1:
      raise ValueError(f'rounds={config.rounds}: must be at least 1')
    return _FakePlan(f'plan {config.algorithm.name} {config.seed}')

  def run(data, keras_model_fn, config, output_dir=None, *, aggregator=None, plan=None,
          log=print, extra_summary=None, resume=True, overwrite=False):
    record.append(('run', output_dir, plan, resume, overwrite))
    status = 'interrupted' if config.rounds == 99 else 'completed'
    return {'status': status, 'algorithm': config.algorithm.name, 'seed': config.seed,
            **extra_summary}

  monkeypatch.setattr(training, 'build_plan', build_plan, raising=False)
  monkeypatch.setattr(training, 'run', run)
  return record


def _inputs(*seeds):
  return {s: types.SimpleNamespace(data=f'data{s}', keras_model_fn=None,
                                   summary_fields=lambda s=s: {'data_seed': s})
          for s in seeds}


def test_plans_every_run_before_training_any(calls, tmp_path):
  settings = {'fedavg': TrainConfig(seed=7),
              'local_x': lambda seed: TrainConfig(AlgorithmConfig('local'), seed=seed + 100)}
  summaries = grid.run_grid(settings, _inputs(3, 4), str(tmp_path), resume=False,
                            overwrite=True, log=lambda line: None)
  assert [c[0] for c in calls] == ['plan'] * 4 + ['run'] * 4
  assert [c[1:] for c in calls[:4]] == [('data3', 'fedavg', 3), ('data4', 'fedavg', 4),
                                        ('data3', 'local', 3), ('data4', 'local', 4)]
  assert [c[1:] for c in calls[4:]] == [
      (os.path.join(tmp_path, 'fedavg', 'seed3'), 'plan fedavg 3', False, True),
      (os.path.join(tmp_path, 'fedavg', 'seed4'), 'plan fedavg 4', False, True),
      (os.path.join(tmp_path, 'local_x', 'seed3'), 'plan local 3', False, True),
      (os.path.join(tmp_path, 'local_x', 'seed4'), 'plan local 4', False, True)]
  assert list(summaries) == ['fedavg', 'local_x']
  assert [(s['algorithm'], s['seed'], s['data_seed']) for s in summaries['local_x']] == [
      ('local', 3, 3), ('local', 4, 4)]


def test_given_plans_are_not_built_again(calls, tmp_path):
  settings = {'fedavg': TrainConfig()}
  planned = grid.plan_grid(settings, _inputs(0))
  del calls[:]
  grid.run_grid(settings, _inputs(0), str(tmp_path), planned=planned, log=lambda line: None)
  assert [c[0] for c in calls] == ['run']
  assert calls[0][2:] == ('plan fedavg 0', True, False)


def test_a_refused_setting_stops_the_grid_before_training(calls, tmp_path):
  settings = {'good': TrainConfig(), 'bad': TrainConfig(rounds=0)}
  with pytest.raises(ValueError, match=r'^bad, seed 0: rounds=0: must be at least 1$'):
    grid.run_grid(settings, _inputs(0, 1), str(tmp_path / 'out'))
  assert all(c[0] == 'plan' for c in calls)
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('settings, inputs, message', [
    ({'a/b': TrainConfig()}, _inputs(0), "setting 'a/b': not a folder name"),
    ({'..': TrainConfig()}, _inputs(0), "setting '..': not a folder name"),
    ({}, _inputs(0), 'at least one setting and one seed'),
    ({'a': TrainConfig()}, {}, 'at least one setting and one seed'),
])
def test_bad_grids_are_refused(calls, settings, inputs, message):
  with pytest.raises(ValueError, match=message):
    grid.plan_grid(settings, inputs)
  assert not [c for c in calls if c[0] == 'run']


def test_an_interrupted_run_stops_the_grid(calls, tmp_path):
  settings = {'stops': TrainConfig(rounds=99), 'later': TrainConfig()}
  with pytest.raises(grid.Interrupted, match='stops, seed 0 stopped before its last round'):
    grid.run_grid(settings, _inputs(0, 1), str(tmp_path), log=lambda line: None)
  assert [c[1] for c in calls if c[0] == 'run'] == [os.path.join(tmp_path, 'stops', 'seed0')]


def _binary(name, *flags):
  return subprocess.run([sys.executable, '-m', f'experiments.{name}', *flags],
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


def test_compare_binary_trains_the_grid_and_resumes(tmp_path):
  flags = ('--dataset=breast_cancer', '--algorithms=fedavg,local', '--seeds=2', '--rounds=1',
           '--batch_size=64', f'--output_dir={tmp_path}')
  result = _binary('compare', *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [l for l in result.stdout.splitlines() if l.startswith('==')] == [
      '== fedavg, seed 0', '== fedavg, seed 1', '== local, seed 0', '== local, seed 1']
  for method in ('fedavg', 'local'):
    for seed in (0, 1):
      with open(tmp_path / method / f'seed{seed}' / 'summary.json') as f:
        assert json.load(f)['seed'] == seed
  with open(tmp_path / 'comparison.json') as f:
    table = json.load(f)
  assert table['algorithms'] == ['fedavg', 'local'] and table['seeds'] == [0, 1]
  assert {'fedavg', 'local (childrens)', 'local (general)', 'local (oncology)'} == set(
      table['table'])
  assert all(cell['n'] == 2 for cell in table['table']['fedavg']['pooled'].values())
  # Run again: every run is complete, so the same table comes back.
  again = _binary('compare', *flags)
  assert again.returncode == 0, again.stderr[-3000:]
  with open(tmp_path / 'comparison.json') as f:
    assert json.load(f)['table'] == table['table']


@pytest.mark.parametrize('name, flags, culprit', [
    ('compare', ['--algorithms=fedavg,fedmagic'], "--algorithms='fedmagic'"),
    ('compare', ['--algorithms=fedavg', '--simulate_dropouts=3'], '--simulate_dropouts=3'),
    ('privacy_sweep', ['--dp=record', '--epsilons=1,lots'], "--epsilons: 'lots'"),
    ('privacy_sweep', ['--epsilons=1'], '--dp=none'),
    ('secure_agg_cost', ['--modes=tff', '--bit_widths=8,40'], '--bit_widths=40'),
    ('secure_agg_cost', ['--modes=tff', '--bit_widths=16', '--secagg_clip=0'],
     '--secagg_clip'),
    ('privacy_report', ['--epsilons=1', '--secagg_threshold=2'], '--secagg_threshold'),
])
def test_grid_binaries_name_the_flag_before_training(name, flags, culprit, tmp_path):
  result = _binary(name, '--dataset=breast_cancer', '--seeds=1', *flags,
                   f'--output_dir={tmp_path}/out')
  assert result.returncode != 0
  assert culprit in result.stderr, result.stderr[-2000:]
  assert result.stderr.startswith('error: ')
  assert 'privacy.' not in result.stderr and 'secure_agg.' not in result.stderr
  assert not os.path.exists(tmp_path / 'out')
