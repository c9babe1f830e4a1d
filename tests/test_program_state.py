"""NumpyProgramStateManager against TFF's own FileProgramStateManager."""

import asyncio
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_med import runtime
from tff_med.program_state import NumpyProgramStateManager


def _learning_state():
  """A real LearningProcess state (attrs, nested lists, optimizer scalars), with
  the round number and a JSON document as tff_med's RunState saves them."""
  process = tff.learning.algorithms.build_weighted_fed_avg(
      lambda: tff.learning.models.from_keras_model(
          tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(3,))]),
          loss=tf.keras.losses.MeanSquaredError(),
          input_spec=(tf.TensorSpec([None, 3]), tf.TensorSpec([None, 1]))),
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
      server_optimizer_fn=tff.learning.optimizers.build_adam(0.1))
  return [process.initialize(), 7, '{"ledger": [1.5, null]}']


def _assert_same(a, b, dtypes=True):
  flat_a, flat_b = tff.structure.flatten(a), tff.structure.flatten(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    if isinstance(x, (bytes, str)) or isinstance(y, (bytes, str)):
      x = x.decode() if isinstance(x, bytes) else x
      y = y.decode() if isinstance(y, bytes) else y
      assert x == y
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
      assert not dtypes or np.asarray(x).dtype == np.asarray(y).dtype


@pytest.fixture(scope='module')
def state():
  with runtime.execution_context():
    return _learning_state()


def test_a_saved_state_loads_as_tffs_own_manager_loads_it(tmp_path, state):
  ours = NumpyProgramStateManager(str(tmp_path / 'ours'))
  theirs = tff.program.FileProgramStateManager(str(tmp_path / 'theirs'))
  asyncio.run(ours.save(state, 1))
  asyncio.run(theirs.save(state, 1))
  loaded = asyncio.run(ours.load(1, state))
  # TFF's reader gives Python ints back as int32; values are the same.
  _assert_same(loaded, asyncio.run(theirs.load(1, state)), dtypes=False)
  _assert_same(loaded, state)
  assert type(loaded[0]) is type(state[0])  # The attrs class comes back.
  assert os.listdir(tmp_path / 'ours' / 'program_state_1') == ['state.npz']


def test_a_version_saved_in_tffs_format_still_loads(tmp_path, state):
  asyncio.run(tff.program.FileProgramStateManager(str(tmp_path)).save(state, 3))
  _assert_same(asyncio.run(NumpyProgramStateManager(str(tmp_path)).load(3, state)), state,
               dtypes=False)


def test_versions_errors_and_pruning_are_tffs(tmp_path, state):
  manager = NumpyProgramStateManager(str(tmp_path), keep_total=2, keep_first=False)
  for version in (1, 2, 3):
    asyncio.run(manager.save(state, version))
  assert asyncio.run(manager.get_versions()) == [2, 3]
  assert not [name for name in os.listdir(tmp_path) if '_temp' in name]
  with pytest.raises(tff.program.ProgramStateExistsError):
    asyncio.run(manager.save(state, 3))
  with pytest.raises(tff.program.ProgramStateNotFoundError):
    asyncio.run(manager.load(1, state))
  _assert_same(asyncio.run(manager.load_latest(state))[0], state)


def test_a_leaf_numpy_cannot_store_is_refused(tmp_path):
  with pytest.raises(TypeError, match='program state leaf of type object'):
    asyncio.run(NumpyProgramStateManager(str(tmp_path)).save([object()], 1))
  with pytest.raises(TypeError, match='NUL'):  # numpy would drop it.
    asyncio.run(NumpyProgramStateManager(str(tmp_path)).save(['ledger\0'], 1))
  assert asyncio.run(NumpyProgramStateManager(str(tmp_path)).get_versions()) is None


def test_a_state_loaded_into_another_layout_is_refused(tmp_path, state):
  manager = NumpyProgramStateManager(str(tmp_path))
  asyncio.run(manager.save([{'a': np.zeros(2), 'b': np.ones(1)}, 1], 1))
  with pytest.raises(ValueError, match='not laid out as the state'):
    asyncio.run(manager.load(1, [{'a': np.zeros(2), 'c': np.ones(1)}, 1]))
  with pytest.raises(ValueError, match='not laid out as the state'):
    asyncio.run(manager.load(1, state))
