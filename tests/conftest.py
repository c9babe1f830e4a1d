"""Shared test set-up: quiet TensorFlow, the real-data folder, connections to hospital nodes."""

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


@pytest.fixture
def connect(monkeypatch):
  """`tff_med.remote.context.connect` with a 5 s connect limit; every connection
  is closed at the end, and its tunnel (stunnel) is then checked stopped."""
  from tff_med.remote import context  # pylint: disable=g-import-not-at-top
  opened = []
  monkeypatch.setattr(context, '_CONNECT_SECONDS', 5.0)

  def connect_(hospital, address, tls):
    connection = context.connect(hospital, address, tls)
    opened.append(connection)
    return connection
  yield connect_
  tunnels = [c.tunnel.process for c in opened if c.tunnel]
  for connection in opened:
    connection.close()
  assert all(p.poll() is not None for p in tunnels)
