"""Shared test set-up: quiet TensorFlow, the real-data folder, TFF's C++ context."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def data_dir() -> str:
  """Folder holding heart_disease/ and medmnist/ (env TFF_MED_DATA_DIR)."""
  path = os.environ.get('TFF_MED_DATA_DIR')
  if not path or not os.path.isdir(path):
    pytest.fail('set TFF_MED_DATA_DIR to the real-data folder (make test points it at '
                '../shared/data)')
  return path
