"""Hospitals as separate node processes (TFF worker behind stunnel) reached over
mutual TLS: the same model as the in-process simulation, handles only from the
coordinator, refused certificates, a node killed mid-run, no process left."""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tff_med import runtime
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms.learning import plain_aggregation
from tff_med.mechanisms.round_plan import Round
from tff_med.mechanisms.task import Task
from tff_med.models import ModelConfig, build_keras_model
from tff_med.remote import certs, context, records
from tff_med.remote.plan import RemoteHospitals

_HOSPITALS = ('north', 'south', 'east')


def _data():
  rng = np.random.default_rng(5)
  arrays = {}
  for k, hospital in enumerate(_HOSPITALS):
    x = rng.normal(size=(30 + 7 * k, 4)).astype(np.float32)
    arrays[hospital] = (x, (x @ np.array([1.0, -1.0, 0.5, 0.0]) > 0).astype(np.int64))
  return FederatedData.from_arrays('toy', arrays, arrays)


def _plan(data):
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), rounds=3, batch_size=8,
                       local_epochs=2, seed=3)
  keras_model_fn = functools.partial(build_keras_model, ModelConfig('mlp'), (4,), 0)
  return plain_aggregation(Task(data, keras_model_fn, config))


def _train(plan, rounds=3, hospitals=_HOSPITALS):
  state = plan.initialize()
  for number in range(1, rounds + 1):
    state = plan.run_round(state, Round(number, hospitals, hospitals)).state
  return [np.asarray(w) for w in plan.get_model_weights(state).trainable]


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """Certificates, and each hospital's records in a folder of its own."""
  root = tmp_path_factory.mktemp('study')
  certs.make_study_certs(str(root / 'certs'), _HOSPITALS)
  data = _data()
  folders = {}
  for hospital in _HOSPITALS:
    folders[hospital] = str(root / f'node_{hospital}')
    records.write_records(data, hospital, folders[hospital])
  return data, str(root / 'certs'), folders


def _start_node(hospital, folder, port, certs_dir):
  process = runtime.start_owned(
      [sys.executable, '-m', 'experiments.hospital', f'--name={hospital}',
       f'--records={folder}', f'--port={port}', f'--certs={certs_dir}', '--host=127.0.0.1'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  line = process.stdout.readline()
  assert 'serving' in line, line + process.stdout.read()
  return process


def _descendants(pid):
  found = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout
  children = [int(p) for p in found.split()]
  return children + [d for c in children for d in _descendants(c)]


@pytest.fixture(scope='module')
def nodes(study):
  """The three nodes, started once for the module (the last test kills one)."""
  import portpicker  # pylint: disable=g-import-not-at-top
  _, certs_dir, folders = study
  ports = {h: portpicker.pick_unused_port() for h in _HOSPITALS}
  processes = {h: _start_node(h, folders[h], ports[h], certs_dir) for h in _HOSPITALS}
  helpers = {h: _descendants(p.pid) for h, p in processes.items()}
  yield ports, processes
  runtime.stop_processes(list(processes.values()))
  for hospital, pids in helpers.items():
    assert len(pids) == 2, (hospital, pids)  # worker_binary and stunnel
    for pid in pids:  # None is left once its node is stopped.
      assert not os.path.exists(f'/proc/{pid}') or open(f'/proc/{pid}/stat').read().split()[2] == 'Z'


@pytest.fixture
def connect(monkeypatch):
  """context.connect, closing every connection (and its tunnel) at the end."""
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


def _connections(connect, ports, certs_dir):
  tls = certs.TlsFiles.of(certs_dir, certs.COORDINATOR)
  return {h: connect(h, f'localhost:{ports[h]}', tls) for h in _HOSPITALS}


def test_three_nodes_over_mutual_tls_train_the_in_process_model(study, nodes, connect):
  data, certs_dir, _ = study
  ports, _ = nodes
  # The in-process simulation's shuffles depend on TF's global seed where one was
  # set in this process (tf.random.set_seed; the baselines set it); the nodes'
  # graphs never see it. Compare with the simulation run as a fresh process runs it.
  tf.random.set_seed(None)
  with runtime.execution_context():
    expected = _train(_plan(data))
    plan = RemoteHospitals(_plan(data), _connections(connect, ports, certs_dir))
    sent = []
    process = plan.inner.process
    original_next = process.next
    plan.inner.process = type('Spy', (), {
        **{k: getattr(process, k) for k in ('initialize', 'get_model_weights')},
        'next': lambda self, state, client_data: (sent.append(client_data),
                                                  original_next(state, client_data))[1]})()
    got = _train(plan)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, atol=1e-5)
  # The coordinator's only per-hospital arguments were handles, never records.
  assert sent == [[records.handle(h, r) for h in _HOSPITALS] for r in (1, 2, 3)]


def test_a_connection_without_the_coordinators_certificate_is_refused(study, nodes, connect):
  _, certs_dir, _ = study
  ports, _ = nodes
  address = {h: f'localhost:{ports[h]}' for h in _HOSPITALS}
  # A study member's certificate, not the coordinator's: the node's checkHost refuses it.
  with pytest.raises(context.NodeUnreachable, match='hospital north at localhost'):
    connect('north', address['north'], certs.TlsFiles.of(certs_dir, 'south'))
  # The coordinator's name, from another study's CA.
  other = os.path.join(os.path.dirname(certs_dir), 'other_certs')
  if not os.path.exists(other):
    certs.make_study_certs(other, _HOSPITALS)
  with pytest.raises(context.NodeUnreachable, match='hospital south'):
    connect('south', address['south'], certs.TlsFiles.of(other, certs.COORDINATOR))
  # Plain gRPC to the TLS port.
  with pytest.raises(context.NodeUnreachable, match='hospital east'):
    connect('east', address['east'], None)
  # The right coordinator certificate, but the node answering is another hospital's.
  with pytest.raises(context.NodeUnreachable, match='hospital north at'):
    connect('north', address['south'], certs.TlsFiles.of(certs_dir, certs.COORDINATOR))
  # And the right one is accepted.
  assert connect('north', address['north'], certs.TlsFiles.of(certs_dir, certs.COORDINATOR))


def test_a_node_killed_mid_run_stops_the_run_naming_it(study, nodes, connect):
  data, certs_dir, _ = study
  ports, processes = nodes
  with runtime.execution_context():
    plan = RemoteHospitals(_plan(data), _connections(connect, ports, certs_dir))
    state = plan.initialize()
    state = plan.run_round(state, Round(1, _HOSPITALS, _HOSPITALS)).state
    runtime.stop_processes([processes['south']])
    with pytest.raises(context.NodeUnreachable, match="round 2: hospital south's node"):
      plan.run_round(state, Round(2, _HOSPITALS, _HOSPITALS))
