"""Attacks on hospital nodes (`tff_med.remote`, `experiments.hospital`,
`experiments.train --hospitals`): a curious or malicious node, a network
observer, a curious coordinator, a stolen certificate, a node that hangs or dies
mid-evaluation, and the --hospitals flag.

Each test is an attack: it asserts what a claim promises (the attacks that
first broke one were fixed: a hung node, a release before a stop and resume,
certificates for hosts named after parties, malformed manifests, names that
cannot be handles, a taken port), or records what an attacker obtains that the
README must state.

The nodes here are `HospitalNode`s (worker_binary behind stunnel, mutual TLS)
started in this process on records written by `records.write_records`;
`tests/test_remote_hospitals.py` covers `experiments.hospital --prepare_from`.
"""

import copy
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import portpicker
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler

from tff_med import runtime, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.data import DataError, heart_disease
from tff_med.mechanisms.plans import build_plan
from tff_med.mechanisms.round_plan import Round
from tff_med.models import ModelConfig, build_keras_model
from tff_med.personalization import PersonalizeConfig
from tff_med.privacy.dp_account import PrivacyConfig
from tff_med.remote import certs, context, records
from tff_med.remote import plan as remote_plan
from tff_med.remote.node import HospitalNode
from tff_med.remote.node_data import NodeData

_HOSPITALS = ('cleveland', 'hungarian', 'va')
_ENV = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
_FEDAVG = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), rounds=2, batch_size=8, seed=3)
_RECORD_DP = PrivacyConfig(level='record', noise_multiplier=1.0, l2_norm_clip=1.0)


def _model_fn(data):
  return functools.partial(build_keras_model, ModelConfig('logreg'), data.feature_shape, 0)


def _remote(plan) -> remote_plan.RemoteHospitals:
  while not isinstance(plan, remote_plan.RemoteHospitals):
    plan = plan.inner
  return plan


def _descendants(pid):
  found = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout
  children = [int(p) for p in found.split()]
  return children + [d for c in children for d in _descendants(c)]


def _running(pid) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split()[2] != 'Z'
  except FileNotFoundError:
    return False


class _Study:
  """The study's certificates and one TLS node per hospital, in this process:
  ROOT/HOSPITAL/raw/processed.HOSPITAL.data (its raw file, as the node host
  keeps it) and ROOT/HOSPITAL/records/HOSPITAL/ (what its worker serves)."""

  def __init__(self, root, data_dir):
    self.root, self.data_dir = str(root), data_dir
    self.data = heart_disease.load(data_dir, seed=0, scaling='public_ranges',
                                   hospitals=_HOSPITALS)
    self.certs = f'{self.root}/certs'
    certs.make_study_certs(self.certs, _HOSPITALS)
    self.ports, self.nodes = {}, {}
    for hospital in _HOSPITALS:
      os.makedirs(f'{self.root}/{hospital}/raw')
      shutil.copy(f'{data_dir}/heart_disease/processed.{hospital}.data',
                  f'{self.root}/{hospital}/raw')
      records.write_records(self.data, hospital, self.records(hospital))
      self.ports[hospital] = portpicker.pick_unused_port()
      self.start(hospital)

  def records(self, hospital):
    return f'{self.root}/{hospital}/records'

  def start(self, hospital):
    self.nodes[hospital] = HospitalNode(
        self.records(hospital), self.ports[hospital],
        certs.TlsFiles.of(self.certs, hospital), '127.0.0.1').start()

  def stop(self, hospital):
    self.nodes[hospital].stop()

  def address(self, hospital):
    return f'localhost:{self.ports[hospital]}'

  def coordinator(self):
    return certs.TlsFiles.of(self.certs, certs.COORDINATOR)


@pytest.fixture(scope='module')
def study(tmp_path_factory, data_dir):
  study_ = _Study(tmp_path_factory.mktemp('attacks'), data_dir)
  yield study_
  for node in study_.nodes.values():
    node.stop()


@pytest.fixture(autouse=True)
def fast_probe(monkeypatch):
  """Nodes are probed every second (a hung node is named sooner)."""
  monkeypatch.setattr(remote_plan, '_PROBE_SECONDS', 1.0)


def _connections(connect, study_, **replaced):
  """Coordinator connections to the study's nodes (`replaced`: hospital -> address)."""
  return {h: connect(h, replaced.get(h, study_.address(h)), study_.coordinator())
          for h in _HOSPITALS}


def _plan(connections, config):
  with runtime.execution_context():
    data = remote_plan.node_data(connections)
  return data, build_plan(data, _model_fn(data), config, log=lambda _: None,
                          connections=connections)


def _weights(plan, state):
  return np.concatenate([np.ravel(w) for w in plan.get_model_weights(state).trainable])


# Claim 1 (the coordinator never receives a raw record) assumes an honest
# coordinator: TFF's worker runs whatever TensorFlow graph it is sent.


def test_the_coordinator_can_read_and_write_any_file_the_node_worker_can(study, connect):
  connection = connect('cleveland', study.address('cleveland'), study.coordinator())

  @tff.tensorflow.computation(tf.string)
  def read(path):
    return tf.io.read_file(path)

  @tff.tensorflow.computation(tf.string)
  def glob(pattern):
    return tf.io.matching_files(pattern)

  @tff.tensorflow.computation(tf.string, tf.string)
  def write(path, text):
    with tf.control_dependencies([tf.io.write_file(path, text)]):
      return tf.constant(True)

  planted = f'{study.root}/written_by_the_coordinator'
  with runtime.execution_context(), tff.framework.get_context_stack().install(
      context.node_context(connection.counted)):
    listed = glob('../*/*')
    raw = read('../raw/processed.cleveland.data')
    hostname = read('/etc/hostname')
    write(planted, 'any file the worker may write')
  # The hospital's raw file (outside the records folder), any readable file of the
  # node's host, and a file written where the worker may write: TLS only says WHO
  # sends the graphs, nothing limits WHAT they do.
  assert b'../raw/processed.cleveland.data' in list(listed)
  with open(f'{study.root}/cleveland/raw/processed.cleveland.data', 'rb') as f:
    assert raw == f.read()
  with open('/etc/hostname', 'rb') as f:
    assert hostname == f.read()
  assert os.path.exists(planted)


def test_each_node_is_sent_the_servers_whole_state_not_only_the_model(study, connect):
  config = dataclasses.replace(_FEDAVG, algorithm=AlgorithmConfig('fedadam', client_lr=0.1))
  _, plan = _plan(_connections(connect, study), config)
  form = mergeable_comp_compiler.compile_to_mergeable_comp_form(_remote(plan).inner.process.next)
  sent = str(form.up_to_merge.type_signature.parameter)
  # Every node's part of a round takes the round's whole argument: the server state
  # with the server optimiser's (Adam's) moments and step, not only the model.
  for field in ('global_model_weights', 'finalizer', 'accumulator', 'preconditioner', 'step'):
    assert field in sent, sent


def test_what_a_node_sends_back_is_the_same_size_for_every_hospital(study, connect):
  # Fresh nodes with the same history: TFF's value ids (whose lengths grow with a
  # worker's past calls) are then the same on both.
  pair, nodes = ('hungarian', 'va'), []
  try:
    connections = {}
    for hospital in pair:
      port = portpicker.pick_unused_port()
      nodes.append(HospitalNode(study.records(hospital), port,
                                certs.TlsFiles.of(study.certs, hospital), '127.0.0.1').start())
      connections[hospital] = connect(hospital, f'localhost:{port}', study.coordinator())
    _, plan = _plan(connections, dataclasses.replace(_FEDAVG, local_epochs=6,
                                                      privacy=_RECORD_DP))
    with runtime.execution_context():
      state = plan.initialize()
      before = {h: connections[h].traffic()[1] for h in pair}
      plan.run_round(state, Round(1, pair, pair))
    received = {h: connections[h].traffic()[1] - before[h] for h in pair}
  finally:
    for node in nodes:
      node.stop()
  print('bytes received from each node in the round:', received)
  # Within a few bytes: varint-encoded counts (DP-SGD steps) and TFF's value ids.
  assert abs(received['hungarian'] - received['va']) <= 8, received


# Claim 2: no hospital receives another's update or the aggregate. It receives the
# next round's model, which is the previous one plus the server's step.


def test_with_two_hospitals_a_node_recovers_the_others_update_from_the_next_model(
    study, connect):
  config = dataclasses.replace(
      _FEDAVG, algorithm=AlgorithmConfig('fedavg', client_lr=0.1, client_weighting='uniform'))
  _, plan = _plan(_connections(connect, study), config)
  pair = ('cleveland', 'va')
  with runtime.execution_context():
    start = plan.initialize()
    w0 = _weights(plan, start)
    joint = _weights(plan, plan.run_round(start, Round(1, pair, pair)).state)  # va is sent it.
    own = _weights(plan, plan.run_round(start, Round(1, ('va',), ('va',))).state)  # va's own.
    truth = _weights(plan, plan.run_round(start, Round(1, ('cleveland',), ('cleveland',))).state)
  # va knows w0, its own update (own - w0) and the model it is sent next (joint):
  recovered = 2 * (joint - w0) - (own - w0)
  np.testing.assert_allclose(recovered, truth - w0, atol=1e-5)  # cleveland's exact update.


# Claim 3: certificates.


@pytest.mark.parametrize('host', [*_HOSPITALS, 'coordinator', 'ca'])
def test_a_host_named_after_a_party_is_refused_when_certificates_are_made(tmp_path, host):
  # Every hospital's certificate lists every --hosts entry: with hosts named after
  # the hospitals (docker compose or Kubernetes service names), cleveland's
  # certificate would also name va, and its node could answer for va.
  with pytest.raises(ValueError, match=f'hosts {host}: a host may not be a party'):
    certs.make_study_certs(str(tmp_path / 'certs'), _HOSPITALS,
                           hosts=('localhost', '127.0.0.1', host))


# Claim 4: DP accounting with the nodes' declared sizes.


def test_one_node_declaring_few_rows_sets_everyones_noise(study):
  """A node's declaration calibrates every hospital's DP-SGD noise (the smallest
  hospital's epsilon binds): 8 declared rows instead of 85 triple it. (A node
  holding more rows than it declares is stopped after round 1 by the noisy-step
  check; one that really holds 8 is legitimate.)"""
  honest = {h: records.manifest(study.data, h) for h in _HOSPITALS}
  config = dataclasses.replace(_FEDAVG, rounds=20, privacy=PrivacyConfig(
      level='record', target_epsilon=1.0, l2_norm_clip=1.0))
  noise = {}
  for rows in (85, 8):
    manifests = copy.deepcopy(honest)
    manifests['va']['train_rows'] = rows
    data = NodeData.from_manifests(manifests)
    noise[rows] = build_plan(data, _model_fn(data), config, log=lambda _: None).dp.noise_multiplier
  print('noise multiplier with va declaring 85 or 8 rows:', noise)
  assert noise[8] > 2.5 * noise[85]


# Claim 4 + 6: a stop after a release, then a resume.


def test_every_update_a_node_released_is_accounted_across_a_stop_and_resume(
    study, connect, tmp_path):
  # Without min_clients (with it, a node lost in evaluation gets NaN metrics).
  config = dataclasses.replace(_FEDAVG, eval_every=1, privacy=_RECORD_DP)
  released = {h: 0 for h in _HOSPITALS}

  def run(lose_va_in_evaluation):
    data, plan = _plan(_connections(connect, study), config)
    remote = _remote(plan)
    run_in_cohort, evaluate_on = remote._run_in_cohort, remote._evaluate_on

    def counted(state, round_):
      result = run_in_cohort(state, round_)  # Every reporting node's update reached us.
      for hospital in round_.reporting:
        released[hospital] += 1
      return result

    def losing_va(weights, hospital):
      if hospital == 'va':
        study.stop('va')
      return evaluate_on(weights, hospital)

    remote._run_in_cohort = counted
    if lose_va_in_evaluation:
      remote._evaluate_on = losing_va
    summary = training.run(data, _model_fn(data), config, output_dir=str(tmp_path / 'run'),
                           plan=plan, log=lambda _: None)
    return summary, plan

  try:
    with pytest.raises(context.NodeUnreachable, match='evaluation: hospital va'):
      run(lose_va_in_evaluation=True)
  finally:
    study.start('va')
  summary, plan = run(lose_va_in_evaluation=False)
  assert summary['rounds_completed'] == 2
  charged = plan.dp.checkpoint()['everyone']['steps']
  per_round = {h: plan.dp._steps(h) for h in _HOSPITALS}  # pylint: disable=protected-access
  print('updates released to the coordinator:', released, 'DP-SGD steps charged:', charged,
        'per round:', per_round)
  assert charged == {h: released[h] * per_round[h] for h in _HOSPITALS}


# Claim 6: a node down before a round drops out, otherwise the run stops naming it.


def test_a_node_that_hangs_is_dropped_or_named_within_a_bound(study, connect):
  connections = _connections(connect, study)
  _, plan = _plan(connections, dataclasses.replace(_FEDAVG, min_clients=2))
  worker = study.nodes['va']._worker  # pylint: disable=protected-access
  outcome = {}

  def second_round(state):
    try:
      dropped = plan.unreachable(_HOSPITALS)
      reporting = tuple(h for h in _HOSPITALS if h not in dropped)
      outcome['result'] = plan.run_round(state, Round(2, _HOSPITALS, reporting))
    except Exception as e:  # pylint: disable=broad-except
      outcome['error'] = e

  with runtime.execution_context():
    state = plan.run_round(plan.initialize(), Round(1, _HOSPITALS, _HOSPITALS)).state
    os.kill(worker.pid, signal.SIGSTOP)
    thread = threading.Thread(target=second_round, args=(state,), daemon=True)
    try:
      thread.start()
      thread.join(20)  # 20 probe periods.
      hung = thread.is_alive()
    finally:
      os.kill(worker.pid, signal.SIGCONT)
      thread.join(120)
  assert not hung, 'round 2 still waiting on va after 20 s'


# Claims 5 and 6 at the edges: manifests, flags, ports.


def _honest_manifests(study_):
  return {h: records.manifest(study_.data, h) for h in _HOSPITALS}


@pytest.mark.parametrize('field, value', [
    ('hospital', 'cleveland'),  # va's node serving cleveland's records.
    ('dataset', 'medmnist'),
    ('preprocessing', {'scaling': 'zscore'}),
])
def test_a_manifest_at_odds_with_the_study_is_refused(study, field, value):
  manifests = _honest_manifests(study)
  manifests['va'][field] = value
  with pytest.raises(DataError, match='hospital va'):
    NodeData.from_manifests(manifests)


@pytest.mark.parametrize('field, value', [
    ('feature_shape', [2**31]),
    ('train_rows', None),  # Missing.
    ('train_rows', '85'),
    ('schema', {}),
])
def test_a_malformed_manifest_is_a_data_error_naming_the_node(study, field, value):
  manifests = _honest_manifests(study)
  if value is None:
    del manifests['va'][field]
  elif field == 'feature_shape':
    for manifest in manifests.values():  # The first node's shape sets the study's.
      manifest[field] = value
  else:
    manifests['va'][field] = value
  with pytest.raises(DataError, match='hospital va|feature_shape'):
    data = NodeData.from_manifests(manifests)
    if field != 'feature_shape':  # Calibration reads the sizes.
      build_plan(data, _model_fn(data), dataclasses.replace(_FEDAVG, privacy=_RECORD_DP),
                 log=lambda _: None)


_PARSE = textwrap.dedent("""
    import json, sys
    from absl import flags
    from experiments import train
    train.context.connect = lambda name, address, tls: name
    outcome = {}
    for value in sys.argv[1:]:
      flags.FLAGS.unparse_flags()
      flags.FLAGS(['train', '--hospitals=' + value, '--insecure_localhost'])
      try:
        outcome[value] = 'accepted ' + ','.join(train._connect())
      except ValueError as e:
        outcome[value] = 'refused ' + str(e)
    print(json.dumps(outcome))
""")
_NAMES = ['a=localhost:1,a=localhost:2', 'a=localhost', '../a=localhost:1', 'a/b=localhost:1',
          '..=localhost:1', 'coordinator=localhost:1']


@pytest.fixture(scope='module')
def parsed_hospitals_flags():
  run = subprocess.run([sys.executable, '-c', _PARSE, *_NAMES], capture_output=True,
                       text=True, env=_ENV, timeout=120, cwd=os.path.dirname(
                           os.path.dirname(os.path.abspath(__file__))))
  assert run.returncode == 0, run.stderr
  return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('value', _NAMES[:2])
def test_hospitals_flag_refuses_duplicates_and_a_missing_port(parsed_hospitals_flags, value):
  assert parsed_hospitals_flags[value].startswith('refused --hospitals:')


@pytest.mark.parametrize('value', _NAMES[2:])
def test_hospitals_flag_refuses_names_no_certificate_or_handle_can_carry(
    parsed_hospitals_flags, value):
  assert parsed_hospitals_flags[value].startswith('refused'), parsed_hospitals_flags[value]


def test_personalisation_is_refused_with_nodes():
  config = dataclasses.replace(_FEDAVG, personalize=PersonalizeConfig(method='finetune'))
  with pytest.raises(ValueError, match='^personalize.method=finetune with hospital nodes'):
    remote_plan.check_config(config)


def test_a_node_whose_port_is_taken_does_not_start(study):
  with socket.socket() as squatter:
    squatter.bind(('127.0.0.1', 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    node = HospitalNode(study.records('va'), port, certs.TlsFiles.of(study.certs, 'va'),
                        '127.0.0.1')
    try:
      with pytest.raises(OSError, match=f'port {port} on 127.0.0.1 is taken'):
        node.start()
    finally:
      node.stop()


# Claim 7: no process outlives its owner, even killed with SIGKILL.


def test_a_node_killed_with_sigkill_leaves_no_worker_or_stunnel(study):
  port = portpicker.pick_unused_port()
  node = runtime.start_owned(
      [sys.executable, '-m', 'experiments.hospital', '--name=va',
       f'--records={study.records("va")}', f'--port={port}', f'--certs={study.certs}',
       '--host=127.0.0.1'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_ENV)
  line = node.stdout.readline()
  assert 'serving' in line, line + node.stdout.read()
  helpers = _descendants(node.pid)
  assert len(helpers) == 2, helpers  # worker_binary and stunnel
  node.kill()
  node.wait()
  deadline = time.monotonic() + 10
  while any(_running(p) for p in helpers) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not any(_running(p) for p in helpers), helpers
