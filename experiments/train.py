r"""Trains one federated algorithm or baseline and writes its outputs.

    python -m experiments.train --dataset=heart_disease --algorithm=fedadam \
        --data_dir=../shared/data --output_dir=runs/heart_fedadam

Writes TensorBoard events, metrics.csv, saved_model/ and summary.json under
--output_dir (default runs/DATASET/ALGORITHM/seedSEED). A folder holding saved
program state is resumed from its last completed round (--overwrite starts
again).

As the coordinator of hospital nodes (`experiments.hospital`), which hold the
records, prepare them and compute the test metrics:

    python -m experiments.train --hospitals=cleveland=hospital-a.example:7001,... \
        --certs=/srv/tff_med/certs --dp=record --target_epsilon=1

--certs holds coordinator.pem, coordinator.key and ca.pem (`experiments.make_certs`).
"""

import math
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med import run_state
from tff_med import audit_log, training
from tff_med.audit import run_audit
from tff_med.data import DataError
from tff_med.remote import certs, context
from tff_med.remote import plan as remote_plan

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where outputs go; default '
                                  'runs/DATASET/ALGORITHM/seedSEED.')
_AUDIT = flags.DEFINE_bool('audit', False, 'After training, run the membership-inference '
                           'audit of experiments.audit on the run (audit.json).')
_AUDIT_KEY = flags.DEFINE_string('audit_key', None, 'Ed25519 private key (PEM) that signs the '
                                 'head of the run\'s audit log (audit_log.sig); make one with '
                                 'python -m experiments.verify_audit_log --new_key=PATH.')
_HOSPITALS = flags.DEFINE_list('hospitals', [], 'Train on hospital nodes instead of data read '
                               'here: NAME=HOST:PORT for each (experiments.hospital).')
_CERTS = flags.DEFINE_string('certs', None, 'With --hospitals: folder with coordinator.pem, '
                             'coordinator.key and ca.pem (mutual TLS).')
_INSECURE = flags.DEFINE_bool('insecure_localhost', False, 'With --hospitals: plain gRPC '
                              'without TLS, for tests on one machine only.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.

# Data flags: with --hospitals, each node prepares its own records.
_NODE_DATA_FLAGS = [flag[2:] for field, flag in experiment_flags.FIELD_FLAGS.items()
                    if field.startswith('data.') and field != 'data.seed'
                    and flag != '--dataset']


def _node_inputs(connections) -> experiment_flags.RunInputs:
  """The nodes' data (`remote.plan.node_data`) and the model the flags describe.
  ValueError where --dataset names another data set than the nodes serve."""
  data = remote_plan.node_data(connections)
  if FLAGS['dataset'].present and FLAGS.dataset != data.name:
    raise ValueError(f'--dataset={FLAGS.dataset}: the hospital nodes serve {data.name}')
  FLAGS.dataset = data.name  # The defaults of the data set the nodes serve.
  return experiment_flags.model_inputs(data)


def _connect():
  """{hospital: Connection} for --hospitals (empty without it); ValueError
  naming the flag at fault."""
  if not _HOSPITALS.value:
    for name in ('certs', 'insecure_localhost'):
      if FLAGS[name].present:
        raise ValueError(f'--{name} applies to --hospitals: it would be ignored')
    return {}
  experiment_flags.refuse_flags(_NODE_DATA_FLAGS + ['audit'],
                                'with --hospitals each node prepares its own data')
  if _INSECURE.value == bool(_CERTS.value):
    raise ValueError('--hospitals: give --certs (mutual TLS) or --insecure_localhost, not '
                     'both or neither')
  addresses = {}
  for item in _HOSPITALS.value:
    name, _, address = item.partition('=')
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit() or name in addresses:
      raise ValueError(f'--hospitals: {item!r} is not a new NAME=HOST:PORT')
    try:
      certs.check_hospital_name(name)
    except ValueError as e:
      raise ValueError(f'--hospitals: {e}') from None
    addresses[name] = address
  tls = certs.TlsFiles.of(_CERTS.value, certs.COORDINATOR) if _CERTS.value else None
  connections = {}
  try:
    for name, address in addresses.items():
      connections[name] = context.connect(name, address, tls)
  except BaseException:
    _close(connections)
    raise
  return connections


def _close(connections) -> None:
  for connection in connections.values():
    connection.close()


def _auc_coverage(summary: dict) -> str:
  """Which hospitals the mean AUC leaves out, and why ('' when none)."""
  undefined = [h for h, m in summary['per_hospital'].items() if math.isnan(m['auc'])]
  if not undefined:
    return ''
  return (f" (AUC over {summary['mean_hospital']['auc_hospitals']} of "
          f"{len(summary['per_hospital'])} hospitals: n/a for {', '.join(undefined)}, whose "
          'test set holds one class)')


def _personalization_lines(block: dict) -> list[str]:
  """Global vs personalised test accuracy and AUC per hospital, and their means."""
  head = (f"personalisation: {block['method']}, {block['epochs']} epoch(s) at lr "
          f"{block['lr']:g}, {block['training']}")
  if 'skipped' in block:
    return [head, f"  skipped: {block['skipped']}"]
  fmt = lambda value: 'n/a' if math.isnan(value) else f'{value:.3f}'
  rows = [(h, m) for h, m in block['per_hospital'].items()]
  rows.append(('mean over hospitals', block['mean_hospital']))
  width = max(len(name) for name, _ in rows)
  lines = [head, f"  {'hospital':<{width}}  accuracy global -> personalised   "
                 'AUC global -> personalised']
  for name, m in rows:
    lines.append(f"  {name:<{width}}  {fmt(m['global']['accuracy']):>15} -> "
                 f"{fmt(m['personalized']['accuracy']):<12}   {fmt(m['global']['auc']):>10} -> "
                 f"{fmt(m['personalized']['auc'])}")
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  connections = {}
  try:
    if _AUDIT.value and FLAGS.algorithm == 'local':
      raise ValueError('--audit attacks a global model: --algorithm=local has none')
    if _AUDIT_KEY.value:
      audit_log.public_key(_AUDIT_KEY.value)
    connections = _connect()
    node_inputs = _node_inputs(connections) if connections else None  # Sets --dataset.
    output_dir = _OUTPUT_DIR.value or os.path.join(
        'runs', FLAGS.dataset, FLAGS.algorithm, f'seed{FLAGS.seed}')
    experiment_flags.check_output_dir(output_dir)  # Before reading any data here.
    inputs = node_inputs or experiment_flags.load_run_inputs()
    data = inputs.data
    config = experiment_flags.train_config()
    plan = training.build_plan(data, inputs.keras_model_fn, config, log=print,
                               connections=connections or None)
  except (DataError, ValueError, FileNotFoundError, context.NodeUnreachable) as e:
    _close(connections)
    experiment_flags.exit_with_error(e, {'audit_key': '--audit_key'})
  try:
    _train(output_dir, inputs, config, plan)
  except context.NodeUnreachable as e:
    sys.exit(f'{e}\n(the state is saved in {output_dir}: run the same command again)')
  finally:
    _close(connections)


def _train(output_dir, inputs, config, plan):
  """Trains and prints the results."""
  data = inputs.data
  print(f'{FLAGS.algorithm} on {data.name}: {len(data.hospitals)} hospitals '
        f'({", ".join(data.hospitals)}), {config.rounds} rounds', flush=True)
  try:
    summary = training.run(data, inputs.keras_model_fn, config, output_dir=output_dir,
                           plan=plan, extra_summary=inputs.summary_fields(),
                           log=lambda line: print(line, flush=True),
                           resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                           audit_key=_AUDIT_KEY.value)
  except run_state.FolderError as e:  # Before any training.
    experiment_flags.exit_with_folder_error(e)
  if summary.get('status') == 'interrupted':
    sys.exit(f'interrupted: the state is saved in {output_dir}; run the same command again '
             'to continue (--overwrite starts again)')
  print(f"pooled test: accuracy {summary['pooled']['accuracy']:.3f} "
        f"auc {summary['pooled']['auc']:.3f}; mean over hospitals: accuracy "
        f"{summary['mean_hospital']['accuracy']:.3f} auc {summary['mean_hospital']['auc']:.3f}"
        + _auc_coverage(summary))
  if 'privacy' in summary:
    print(f"privacy: {summary['privacy']['statement']}")
  if 'personalization' in summary:
    print('\n'.join(_personalization_lines(summary['personalization'])))
  if 'simulated_attack' in summary:
    attack = summary['simulated_attack']
    print(f"SIMULATED ATTACK (research): {attack['attacker']} sent {attack['name']} updates")
  if summary.get('stopped_early'):
    print(f"stopped early: {summary['reason']}")
  if _AUDIT.value:
    print(run_audit.format_result(run_audit.audit_run(output_dir, FLAGS.data_dir)))
  print(f'outputs in {output_dir}; TensorBoard: tensorboard --logdir {output_dir}/tensorboard; '
        f"audit log head {summary['audit_log_sha256'][:16]}... (check it: python -m "
        f'experiments.verify_audit_log {output_dir})')


if __name__ == '__main__':
  app.run(main)
