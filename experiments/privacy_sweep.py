r"""Accuracy and AUC against the privacy budget epsilon, with reference lines.

    python -m experiments.privacy_sweep --dataset=heart_disease --dp=record \
        --epsilons=0.5,1,2,4,8,inf --seeds=3 --data_dir=../shared/data

For each target epsilon (and seed) it calibrates the noise, trains and
accounts; it also trains the non-private federated model and the local-only
models. Writes privacy_sweep.md, .json and .png under --output_dir, and every
run's outputs in SETTING/seedK (epsilon_E, non_private, local).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med import grid
from tff_med import privacy_sweep
from tff_med.data import DataError
from tff_med.privacy.dp_account import PrivacyConfig

_EPSILONS = flags.DEFINE_list('epsilons', ['0.5', '1', '2', '4', '8', 'inf'],
                              'Target epsilons (per record for --dp=record); inf = '
                              'clipping without noise.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Default runs/privacy_sweep_DATASET.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.
_OVERRIDES = {'privacy.target_epsilon': '--epsilons'}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'privacy_sweep_{FLAGS.dataset}')
  try:
    experiment_flags.check_output_dir(output_dir)
    experiment_flags.refuse_flags(('target_epsilon', 'noise_multiplier'),
                                  'it calibrates the noise for each of --epsilons')
    epsilons = experiment_flags.parse_list('epsilons', float)
    if FLAGS.dp == 'none':
      raise ValueError('--dp=none: choose --dp=record or --dp=client for a privacy sweep')
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    settings = {privacy_sweep.setting_name(target): experiment_flags.train_config(
        privacy=experiment_flags.privacy_config(target)) for target in epsilons}
    settings[privacy_sweep.NON_PRIVATE] = experiment_flags.train_config(
        privacy=PrivacyConfig())
    settings[privacy_sweep.LOCAL] = experiment_flags.train_config(
        'local', privacy=PrivacyConfig())
    planned = grid.plan_grid(settings, inputs)
  except (DataError, ValueError) as e:
    experiment_flags.exit_with_error(e, _OVERRIDES)
  summaries = experiment_flags.run_grid(settings, inputs, output_dir, planned)
  _, markdown = privacy_sweep.write_privacy_sweep(
      summaries, epsilons, list(inputs), output_dir,
      title=f'{FLAGS.dataset}, {FLAGS.algorithm}, --dp={FLAGS.dp}')
  print(markdown)
  print(f'table and plot: {output_dir}/privacy_sweep.{{md,json,png}}')


if __name__ == '__main__':
  app.run(main)
