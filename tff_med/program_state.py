"""`tff.program.FileProgramStateManager` with each version in one numpy file.

TFF's manager writes every version as a TensorFlow SavedModel: 86 ms per save of
heart_disease's 14-weight state on this machine, more than the round it follows
(50 ms). This subclass keeps TFF's versioning, folder names, pruning
(`keep_total`, `keep_first`) and errors, and replaces only the file format: the
state's leaves (`tree.flatten`) go into `program_state_N/state.npz`, written
to a temporary folder, flushed to disk and renamed into place (about 1 ms). TFF
offers no other file format; written here for that reason.

Loading takes the same `structure` as TFF's manager and gives numpy values, as
TFF's does. A version saved by TFF's own format (no `state.npz`) loads through
TFF's reader, so run folders saved before this module still resume.
"""

import os
import secrets

import numpy as np
import tensorflow_federated as tff
import tree

_FILE = 'state.npz'


def _leaf(value) -> np.ndarray:
  """One leaf as an array numpy can store without pickling."""
  array = np.asarray(value)
  if array.dtype == object:
    raise TypeError(f'program state leaf of type {type(value).__name__} cannot be saved '
                    'as a numpy array')
  return array


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class NumpyProgramStateManager(tff.program.FileProgramStateManager):
  """TFF's file manager (same arguments) storing each version as one .npz."""

  async def save(self, program_state, version: int) -> None:
    """Saves `program_state` as `version`; ProgramStateExistsError if it exists."""
    path = self._get_path_for_version(version)
    if os.path.exists(path):
      raise tff.program.ProgramStateExistsError(version=version, path=self._root_dir)
    state = await tff.program.materialize_value(program_state)
    leaves = [_leaf(value) for value in tree.flatten(state)]
    temp = f'{path}_temp{secrets.token_hex(4)}'
    os.makedirs(temp)
    with open(os.path.join(temp, _FILE), 'wb') as f:
      np.savez(f, *leaves)
      f.flush()
      os.fsync(f.fileno())
    _fsync(temp)
    os.rename(temp, path)
    _fsync(self._root_dir)
    await self._remove_old_program_state()

  async def load(self, version: int, structure):
    """The state saved as `version`, in `structure`'s nesting, numpy leaves
    (0-d arrays as numpy scalars); ProgramStateNotFoundError if none."""
    path = os.path.join(self._get_path_for_version(version), _FILE)
    if not os.path.exists(path):
      return await super().load(version, structure)  # TFF's format, or not found.
    with np.load(path, allow_pickle=False) as saved:
      leaves = [saved[f'arr_{i}'] for i in range(len(saved.files))]
    leaves = [leaf[()] if leaf.ndim == 0 else leaf for leaf in leaves]
    return tree.unflatten_as(structure, leaves)
