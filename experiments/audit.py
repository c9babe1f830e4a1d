"""Membership-inference audit of a finished run.

    python -m experiments.audit --run_dir=runs/heart_disease/fedavg/seed0

Reloads the run's data and saved model, attacks it per hospital and overall
(threshold attacks on loss and confidence, logistic-regression and MLP
attackers), bounds epsilon from below at --target_delta (default: the run's
delta, or for a non-DP run the default record delta of its data) with
confidence 1 - --alpha, audits one hospital's local-only model for comparison,
and writes audit.json and TensorBoard scalars (audit/...) into the run folder.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med.audit import membership
from tff_med.audit import run_audit
from tff_med.data import DataError

_RUN_DIR = flags.DEFINE_string('run_dir', None, 'Output folder of experiments.train.',
                               required=True)
_LOCAL_HOSPITAL = flags.DEFINE_string('local_hospital', '', 'Hospital whose local-only '
                                      'model is audited for comparison (default: the '
                                      'first); "none" to skip.')
_ALPHA = flags.DEFINE_float('alpha', membership.DEFAULT_ALPHA, 'The epsilon lower bounds '
                            'hold with confidence 1 - alpha, in (0, 1).')

flags.declare_key_flag('data_dir')  # --help lists them.
flags.declare_key_flag('target_delta')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  local = None if _LOCAL_HOSPITAL.value == 'none' else _LOCAL_HOSPITAL.value
  try:
    result = run_audit.audit_run(_RUN_DIR.value, flags.FLAGS.data_dir, local,
                                 delta=flags.FLAGS.target_delta, alpha=_ALPHA.value)
  except (DataError, ValueError, FileNotFoundError) as e:
    experiment_flags.exit_with_error(e)
  print(run_audit.format_result(result))
  print(f'written: {_RUN_DIR.value}/audit.json')


if __name__ == '__main__':
  app.run(main)
