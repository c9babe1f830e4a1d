r"""Trains one federated algorithm or baseline and writes its outputs.

    python -m experiments.train --dataset=heart_disease --algorithm=fedadam \
        --data_dir=../shared/data --output_dir=runs/heart_fedadam

Writes TensorBoard events, metrics.csv, saved_model/ and summary.json under
--output_dir (default runs/DATASET/ALGORITHM/seedSEED). A folder holding saved
program state is resumed from its last completed round (--overwrite starts
again).
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

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where outputs go; default '
                                  'runs/DATASET/ALGORITHM/seedSEED.')
_AUDIT = flags.DEFINE_bool('audit', False, 'After training, run the membership-inference '
                           'audit of experiments.audit on the run (audit.json).')
_AUDIT_KEY = flags.DEFINE_string('audit_key', None, 'Ed25519 private key (PEM) that signs the '
                                 'head of the run\'s audit log (audit_log.sig); make one with '
                                 'python -m experiments.verify_audit_log --new_key=PATH.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.


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
  output_dir = _OUTPUT_DIR.value or os.path.join(
      'runs', FLAGS.dataset, FLAGS.algorithm, f'seed{FLAGS.seed}')
  try:
    experiment_flags.check_output_dir(output_dir)
    if _AUDIT.value and FLAGS.algorithm == 'local':
      raise ValueError('--audit attacks a global model: --algorithm=local has none')
    if _AUDIT_KEY.value:
      audit_log.public_key(_AUDIT_KEY.value)
    inputs = experiment_flags.load_run_inputs()
    data = inputs.data
    config = experiment_flags.train_config()
    plan = training.build_plan(data, inputs.keras_model_fn, config, log=print)
  except (DataError, ValueError) as e:
    experiment_flags.exit_with_error(e, {'audit_key': '--audit_key'})
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
