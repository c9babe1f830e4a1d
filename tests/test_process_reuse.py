"""A grid's runs that differ only in their seed share one traced process, and
train exactly as a process traced for their own seed."""

import functools

import numpy as np

from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms import learning
from tff_med.models import ModelConfig, build_keras_model


def _data(seed):
  rng = np.random.default_rng(seed)  # Each seed its own records and hospital sizes.
  arrays = {h: (rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 2, n))
            for h, n in (('a', 20 + seed), ('b', 41 - seed), ('c', 9))}
  return FederatedData.from_arrays('toy', arrays, arrays)


def _config(seed, name='fedadam'):
  return TrainConfig(AlgorithmConfig(name, client_lr=0.3, server_lr=0.05), rounds=3,
                     batch_size=8, seed=seed)


def _model_fn(seed, model=ModelConfig('mlp', (6,))):
  return functools.partial(build_keras_model, model, (5,), seed)


def test_a_process_traced_at_one_seed_trains_another_seed_as_its_own_would(monkeypatch):
  monkeypatch.setattr(learning, '_PROCESSES', {})
  results = {}
  for fresh in (False, True):
    monkeypatch.setattr(learning, '_PROCESSES', {})
    processes, finals = [], []
    for seed in (0, 1):
      if fresh:
        monkeypatch.setattr(learning, '_PROCESSES', {})
      plan = training.build_plan(_data(seed), _model_fn(seed), _config(seed),
                                 log=lambda _: None)
      processes.append(plan.process)
      finals.append(_trained(plan, seed))
    assert (processes[0] is processes[1]) == (not fresh)
    results[fresh] = finals
  for reused, own in zip(results[False], results[True]):
    for a, b in zip(reused, own):
      np.testing.assert_array_equal(a, b)
  # The seeds' initial weights differ, so a reused process that kept seed 0's
  # initial weights would have failed above.
  assert not np.array_equal(results[True][0][0], results[True][1][0])


def _trained(plan, seed):
  """Trainable weights after the config's rounds (every hospital every round)."""
  from tff_med import runtime  # pylint: disable=g-import-not-at-top
  with runtime.execution_context():
    state = plan.initialize()
    for round_num in range(1, 4):
      state = plan.process.next(state, [plan.task.dataset(h, round_num)
                                        for h in plan.task.data.hospitals]).state
    return [np.asarray(w) for w in plan.get_model_weights(state).trainable]


def test_what_the_traced_computations_depend_on_is_in_the_key(monkeypatch):
  monkeypatch.setattr(learning, '_PROCESSES', {})
  build = lambda seed, **kw: training.build_plan(
      _data(seed), kw.get('model_fn', _model_fn(seed)), _config(seed, kw.get('name', 'fedadam')),
      log=lambda _: None).process
  first = build(0)
  assert build(3) is first
  assert build(0, name='fedavg') is not first  # Another algorithm.
  dropout = ModelConfig('mlp', (6,), dropout=0.5)  # Its random state is in the graph.
  assert build(0, model_fn=_model_fn(0, dropout)) is not build(0, model_fn=_model_fn(0, dropout))
  assert build(0, model_fn=_model_fn(0, ModelConfig('mlp', (7,)))) is not first
  # A function the key cannot see into is traced every time.
  own = lambda: build_keras_model(ModelConfig('mlp', (6,)), (5,), 0)
  assert build(0, model_fn=own) is not build(0, model_fn=own)
