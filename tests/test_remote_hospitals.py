"""Hospitals as separate node processes (TFF worker behind stunnel), each
preparing its own records from its own raw file, reached over mutual TLS: the
same model and test metrics as the in-process simulation, handles only from
the coordinator and only model-sized messages back, refused certificates, a
node lost before a round (dropout with min_clients, else a stop naming it, and
a resume once it is back), the coordinator binary with record-level DP, no
process left."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import portpicker
import pytest
import tensorflow as tf

from tff_med import evaluation, runtime, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import AttackConfig, TrainConfig
from tff_med.data import heart_disease
from tff_med.mechanisms.plans import build_plan
from tff_med.mechanisms.round_plan import Round
from tff_med.models import ModelConfig, build_keras_model
from tff_med.privacy.dp_account import PrivacyConfig
from tff_med.remote import certs, context, records
from tff_med.remote import plan as remote_plan
from tff_med.remote.node_data import NodeData
from tff_med.secure_agg.config import SecureAggConfig

_HOSPITALS = ('cleveland', 'hungarian', 'va')
_ENV = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
_CONFIG = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), rounds=3, batch_size=8,
                      local_epochs=2, seed=3)


def _model_fn(data):
  return functools.partial(build_keras_model, ModelConfig('logreg'), data.feature_shape, 0)


def _reference(data_dir):
  """The three hospitals in process, prepared as their nodes prepare them."""
  return heart_disease.load(data_dir, seed=0, scaling='public_ranges', hospitals=_HOSPITALS)


def _train(plan, rounds=3):
  state = plan.initialize()
  results = []
  for number in range(1, rounds + 1):
    results.append(plan.run_round(state, Round(number, _HOSPITALS, _HOSPITALS)))
    state = results[-1].state
  return state, results


class _Study:
  """Certificates, each hospital's raw file in a folder of its own, and one node
  per hospital (`experiments.hospital --prepare_from`)."""

  def __init__(self, root, data_dir):
    self.root = str(root)
    certs.make_study_certs(f'{self.root}/certs', _HOSPITALS)
    self.ports, self.nodes = {}, {}
    for hospital in _HOSPITALS:
      os.makedirs(f'{self.root}/{hospital}/raw')
      shutil.copy(f'{data_dir}/heart_disease/processed.{hospital}.data',
                  f'{self.root}/{hospital}/raw')
      self.ports[hospital] = portpicker.pick_unused_port()
      self.start(hospital, prepare=True)

  def start(self, hospital, prepare=False):
    process = runtime.start_owned(
        [sys.executable, '-m', 'experiments.hospital', f'--name={hospital}',
         *([f'--prepare_from={self.root}/{hospital}/raw'] if prepare else []),
         f'--records={self.root}/{hospital}/records', f'--port={self.ports[hospital]}',
         f'--certs={self.root}/certs', '--host=127.0.0.1'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_ENV)
    line = process.stdout.readline()
    assert 'serving' in line, line + process.stdout.read()
    self.nodes[hospital] = process

  def addresses(self):
    return {h: f'localhost:{self.ports[h]}' for h in _HOSPITALS}


def _descendants(pid):
  found = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout
  children = [int(p) for p in found.split()]
  return children + [d for c in children for d in _descendants(c)]


@pytest.fixture(scope='module')
def study(tmp_path_factory, data_dir):
  """The three nodes, started once for the module (the last tests stop one)."""
  study_ = _Study(tmp_path_factory.mktemp('study'), data_dir)
  helpers = {h: _descendants(p.pid) for h, p in study_.nodes.items()}
  yield study_
  runtime.stop_processes(list(study_.nodes.values()))
  for hospital, pids in helpers.items():
    assert len(pids) == 2, (hospital, pids)  # worker_binary and stunnel
    for pid in pids:  # None is left once its node is stopped.
      assert (not os.path.exists(f'/proc/{pid}')
              or open(f'/proc/{pid}/stat').read().split()[2] == 'Z')


def _connections(connect, study_):
  tls = certs.TlsFiles.of(f'{study_.root}/certs', certs.COORDINATOR)
  return {h: connect(h, a, tls) for h, a in study_.addresses().items()}


def test_three_nodes_over_mutual_tls_train_and_evaluate_as_in_process(study, connect,
                                                                      data_dir):
  reference = _reference(data_dir)
  # The in-process simulation's shuffles depend on TF's global seed where one was
  # set in this process (tf.random.set_seed; the baselines set it); the nodes'
  # graphs never see it. Compare with the simulation run as a fresh process runs it.
  tf.random.set_seed(None)
  with runtime.execution_context():
    connections = _connections(connect, study)
    data = remote_plan.node_data(connections)
    # The coordinator holds the nodes' declarations, not one record.
    assert isinstance(data, NodeData) and data.hospitals == _HOSPITALS
    for h in _HOSPITALS:
      assert (data.num_train(h), data.num_test(h)) == (reference.num_train(h),
                                                       reference.num_test(h))
      assert len(data.test[h][0]) == 0
      assert data.train.create_tf_dataset_for_client(h).reduce(0, lambda n, _: n + 1) == 0
      assert data.schemas[h] == reference.schemas[h]
    plan = build_plan(data, _model_fn(data), _CONFIG, connections=connections)
    sent = []
    process = plan.inner.process
    plan.inner.process = type('Spy', (), {
        **{k: getattr(process, k) for k in ('initialize', 'get_model_weights',
                                            'set_model_weights')},
        'next': lambda self, state, client_data: (sent.append(client_data),
                                                  process.next(state, client_data))[1]})()
    before = [connections[h].traffic() for h in _HOSPITALS]
    state, results = _train(plan)
    moved = np.subtract([connections[h].traffic() for h in _HOSPITALS], before)
    got_eval = plan.evaluate(state)
    expected_plan = build_plan(reference, _model_fn(reference), _CONFIG)
    expected_state, _ = _train(expected_plan)
    expected_eval = expected_plan.evaluate(expected_state)
    pairs = list(zip(plan.get_model_weights(state).trainable,  # TFF computations: in the block.
                     expected_plan.get_model_weights(expected_state).trainable))
  for g, e in pairs:
    np.testing.assert_allclose(g, e, atol=1e-5)
  # Test metrics computed on the nodes equal scikit-learn's on the same model.
  for h in _HOSPITALS:
    for metric in ('accuracy', 'auc', 'num_test'):
      assert got_eval['per_hospital'][h][metric] == pytest.approx(
          expected_eval['per_hospital'][h][metric], abs=1e-5)
  assert got_eval['pooled']['accuracy'] == pytest.approx(expected_eval['pooled']['accuracy'])
  assert np.isnan(got_eval['pooled']['auc'])  # Needs all logits in one place.
  # The coordinator's only per-hospital arguments were handles, never records.
  assert sent == [[records.handle(h, r) for h in _HOSPITALS] for r in (1, 2, 3)]
  # What a hospital sent does not grow with its records: the same bytes from va (85
  # training records) as from cleveland (199), within a few varint bytes, and at
  # least the model's update.
  model_bytes = 4 * _model_fn(data)().count_params()
  for result in results:
    network = result.metrics['network']
    print(f"bytes per hospital in round: from it {network['bytes_from_hospital']:.0f}, "
          f"to it {network['bytes_to_hospital']:.0f}")
  # Every node got the same (the model, the computation, its handle) and sent the
  # same: no node ran the merge, which would have handed it the others' updates (TFF's
  # own mergeable context merges on whichever node finishes first).
  print('bytes to and from each hospital over 3 rounds:', moved.tolist())
  assert np.ptp(moved[:, 0]) < 64 and np.ptp(moved[:, 1]) < 64, moved
  assert moved[:, 1].min() >= 3 * model_bytes


def test_metrics_computed_in_the_worker_match_scikit_learn():
  rng = np.random.default_rng(0)
  cases = [
      (rng.normal(size=50), rng.integers(0, 2, 50)),
      (np.round(rng.normal(size=60), 1), rng.integers(0, 2, 60)),  # Many ties.
      (np.array([np.inf, -np.inf, 0.5, 0.5, -1.0]), np.array([1, 0, 1, 0, 0])),
      (rng.normal(size=10), np.ones(10, int)),  # One class: AUC undefined.
      (np.array([0.1, np.nan, 2.0]), np.array([0, 1, 1])),  # Diverged.
  ]
  for logits, labels in cases:
    got = records._binary_metrics(  # pylint: disable=protected-access
        tf.constant(logits, tf.float64), tf.constant(labels, tf.float64))
    expected = evaluation.binary_metrics(logits, labels)
    for metric in ('accuracy', 'auc'):
      np.testing.assert_allclose(float(got[metric]), expected[metric], rtol=1e-12,
                                 err_msg=f'{metric} of {logits}')


@pytest.mark.parametrize('field, config', [
    ('algorithm.name', TrainConfig(AlgorithmConfig('pooled'))),
    ('secure_agg.mode', TrainConfig(secure_agg=SecureAggConfig(mode='masking'))),
    ('secure_agg.mode', TrainConfig(secure_agg=SecureAggConfig(mode='tff'))),
    ('attack.name', TrainConfig(attack=AttackConfig('label_flip', attacker='va'))),
    ('clients_per_round', TrainConfig(clients_per_round=2, privacy=PrivacyConfig(
        level='client', noise_multiplier=1.0, l2_norm_clip=1.0))),
])
def test_what_nodes_cannot_run_is_refused_naming_the_field(field, config):
  with pytest.raises(ValueError, match=f'^{field}=.* with hospital nodes'):
    remote_plan.check_config(config)


def test_a_connection_without_the_coordinators_certificate_is_refused(study, connect):
  certs_dir = f'{study.root}/certs'
  address = study.addresses()
  # A study member's certificate, not the coordinator's: the node's checkHost refuses it.
  with pytest.raises(context.NodeUnreachable, match='hospital cleveland at localhost'):
    connect('cleveland', address['cleveland'], certs.TlsFiles.of(certs_dir, 'va'))
  # The coordinator's name, from another study's CA.
  other = f'{study.root}/other_certs'
  if not os.path.exists(other):
    certs.make_study_certs(other, _HOSPITALS)
  with pytest.raises(context.NodeUnreachable, match='hospital hungarian'):
    connect('hungarian', address['hungarian'], certs.TlsFiles.of(other, certs.COORDINATOR))
  # Plain gRPC to the TLS port.
  with pytest.raises(context.NodeUnreachable, match='hospital va'):
    connect('va', address['va'], None)
  # The right coordinator certificate, but the node answering is another hospital's.
  with pytest.raises(context.NodeUnreachable, match='hospital cleveland at'):
    connect('cleveland', address['va'], certs.TlsFiles.of(certs_dir, certs.COORDINATOR))
  # And the right one is accepted.
  assert connect('cleveland', address['cleveland'],
                 certs.TlsFiles.of(certs_dir, certs.COORDINATOR))


def test_the_coordinator_binary_accounts_record_dp_with_the_nodes_sizes(study, data_dir,
                                                                         tmp_path):
  output = tmp_path / 'run'
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train',
       '--hospitals=' + ','.join(f'{h}={a}' for h, a in study.addresses().items()),
       f'--certs={study.root}/certs', '--dp=record', '--target_epsilon=1', '--rounds=2',
       f'--output_dir={output}'], capture_output=True, text=True, env=_ENV, timeout=600)
  assert run.returncode == 0, run.stdout + run.stderr
  summary = json.loads((output / 'summary.json').read_text())
  assert summary['hospitals'] == list(_HOSPITALS) and summary['rounds_completed'] == 2
  assert 'data_config' not in summary  # No data folder was read.
  # The same calibration as the in-process simulation of these three hospitals.
  reference = _reference(data_dir)
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=summary['config']['algorithm'][
      'client_lr']), rounds=2, batch_size=summary['config']['batch_size'],
                       local_epochs=summary['config']['local_epochs'],
                       privacy=PrivacyConfig(**{**summary['config']['privacy']}))
  expected = build_plan(reference, _model_fn(reference), config, log=lambda _: None)
  assert summary['privacy']['noise_multiplier'] == pytest.approx(expected.dp.noise_multiplier)
  assert summary['privacy']['epsilon'] <= 1.0
  assert 'with mutual TLS' not in run.stderr


@pytest.mark.parametrize('flags, message', [
    (['--certs=x'], '--certs applies to --hospitals'),
    (['--hospitals=a=localhost:1', '--insecure_localhost', '--data_dir=x'],
     '--data_dir is not used by this binary: with --hospitals each node prepares its own'),
    (['--hospitals=a=localhost', '--insecure_localhost'],
     "'a=localhost' is not a new NAME=HOST:PORT"),
])
def test_coordinator_flag_errors_are_one_line(flags, message):
  _assert_one_line_error('train', flags, message)


@pytest.mark.parametrize('flags, message', [
    (['--split=flamby'], '--split applies to --prepare_from: it would be ignored'),
    (['--prepare_from=x', '--dataset=breastmnist', '--scaling=zscore'],
     '--scaling does not apply to --dataset=breastmnist'),
    (['--prepare_from=/nonexistent'],
     "hospital 'va', file /nonexistent/processed.va.data: file not found"),
])
def test_node_flag_errors_are_one_line(flags, message, tmp_path):
  _assert_one_line_error('hospital', ['--name=va', f'--records={tmp_path}', '--port=1',
                                      '--insecure_localhost', *flags], message)


def _assert_one_line_error(binary, flags, message):
  run = subprocess.run([sys.executable, '-m', f'experiments.{binary}', *flags],
                       capture_output=True, text=True, env=_ENV, timeout=120)
  lines = run.stderr.strip().splitlines()
  assert run.returncode != 0 and len(lines) == 1 and message in lines[0], run.stderr


def test_a_lost_node_stops_the_run_until_it_is_back_or_with_min_clients_drops_out(
    study, connect, tmp_path):
  log = []

  def run(output, config, stop_after_round_1=None):
    def log_(line):
      log.append(line)
      if stop_after_round_1 and line.startswith('round    1/'):
        runtime.stop_processes([study.nodes[stop_after_round_1]])
    connections = _connections(connect, study)
    with runtime.execution_context():
      data = remote_plan.node_data(connections)
    return training.run(data, _model_fn(data), config, output_dir=str(tmp_path / output),
                        plan=build_plan(data, _model_fn(data), config, log=log_,
                                        connections=connections), log=log_)

  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), rounds=2, batch_size=8,
                       eval_every=1, seed=3)
  # Without min_clients: hungarian's node stops after round 1, and round 2 stops the
  # run naming it; the state after round 1 is saved.
  with pytest.raises(context.NodeUnreachable, match="hospital hungarian's node does not "
                     'answer: the run stops here'):
    run('stopped', config, stop_after_round_1='hungarian')
  # Back: the same run resumes after round 1 and finishes.
  study.start('hungarian')
  summary = run('stopped', config)
  assert summary['rounds_completed'] == 2 and summary['sessions'] == 2
  assert any('resuming after round 1' in line for line in log)
  # With min_clients=2 a lost node is a dropout: round 2 trains on the other two,
  # and the lost hospital's test metrics are NaN.
  summary = run('dropout', dataclasses.replace(config, min_clients=2),
                stop_after_round_1='hungarian')
  assert summary['rounds_completed'] == 2 and summary['dropouts'] == 1
  assert np.isnan(summary['per_hospital']['hungarian']['accuracy'])
  assert not np.isnan(summary['per_hospital']['va']['accuracy'])
  rows = (tmp_path / 'dropout' / 'metrics.csv').read_text().splitlines()
  header = rows[0].split(',')
  assert [r.split(',')[header.index('reporting')] for r in rows[1:]] == ['3', '2']


def test_a_node_lost_mid_round_aborts_it_and_record_dp_still_charges_every_hospital_asked(
    study, connect, data_dir):
  for hospital, node in study.nodes.items():  # The test before stops one.
    if node.poll() is not None:
      study.start(hospital)
  config = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.1), rounds=3, batch_size=8,
                       eval_every=3, seed=3, min_clients=2,
                       privacy=PrivacyConfig(level='record', noise_multiplier=1.0,
                                             l2_norm_clip=1.0))
  connections = _connections(connect, study)
  data = remote_plan.node_data(connections)
  plan = build_plan(data, _model_fn(data), config, log=lambda _: None,
                    connections=connections)
  nodes = plan.inner  # RemoteHospitals, under RecordLevelDp.
  asked = []

  def unreachable(cohort):  # va's node answers round 2's probe, then goes.
    down = type(nodes).unreachable(nodes, cohort)
    asked.append(down)
    if len(asked) == 2:
      runtime.stop_processes([study.nodes['va']])
    return down
  nodes.unreachable = unreachable
  lines = []
  summary = training.run(data, _model_fn(data), config, plan=plan, log=lines.append)
  assert asked == [set(), set(), {'va'}]
  assert summary['skipped_rounds'] == 1 and summary['dropouts'] == 1
  assert any("aborted: round 2: hospital va's node stopped answering" in l for l in lines)
  # Round 2 released nothing, but cleveland's and hungarian's updates (and va's) may
  # have reached the coordinator: charged. So: va 2 rounds, the others 3.
  expected = build_plan(_reference(data_dir),
                        _model_fn(data), config, log=lambda _: None).dp
  for number, cohort in ((1, _HOSPITALS), (2, _HOSPITALS), (3, ('cleveland', 'hungarian'))):
    expected.record_round(cohort, number)
  assert plan.ledger()['epsilon'] == expected.ledger()['epsilon']
  uncharged = build_plan(_reference(data_dir),
                         _model_fn(data), config, log=lambda _: None).dp
  for number, cohort in ((1, _HOSPITALS), (3, ('cleveland', 'hungarian'))):
    uncharged.record_round(cohort, number)
  for h in _HOSPITALS:  # The aborted round counts for every hospital.
    assert (plan.ledger()['epsilon']['everyone'][h] >
            uncharged.ledger()['epsilon']['everyone'][h] + 0.1)
