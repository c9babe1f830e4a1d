"""Accuracy and AUC against the privacy budget epsilon, with reference lines.

    python -m experiments.privacy_sweep --dataset=heart_disease --dp=record \
        --epsilons=0.5,1,2,4,8,inf --seeds=3 --data_dir=../shared/data

For each target epsilon (and seed) it calibrates the noise, trains and
accounts; it also trains the non-private federated model and the local-only
models. Writes privacy_sweep.md, .json and .png under --output_dir.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tff_med import experiment_flags
from tff_med import privacy_sweep
from tff_med import training
from tff_med.data import DataError
from tff_med.privacy import dp_training

_EPSILONS = flags.DEFINE_list('epsilons', ['0.5', '1', '2', '4', '8', 'inf'],
                              'Target epsilons (per record for --dp=record); inf = '
                              'clipping without noise.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Default runs/privacy_sweep_DATASET.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    epsilons = [float(e) for e in _EPSILONS.value]
    if FLAGS.dp == 'none':
      raise ValueError('--dp=none: choose --dp=record or --dp=client for a privacy sweep')
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    seeds = list(inputs)
    for target in epsilons:  # Every flag checked and every noise calibrated up front.
      config = experiment_flags.train_config(
          seed=seeds[0], privacy=experiment_flags.privacy_config(target))
      config.validate(len(inputs[seeds[0]].data.hospitals))
      config.build_dp(inputs[seeds[0]].data, log=lambda line: None)
  except (DataError, ValueError) as e:
    sys.exit(f'error: {e}')
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'privacy_sweep_{FLAGS.dataset}')
  os.makedirs(output_dir, exist_ok=True)

  def run_fn(target, algorithm, seed, run_dir):
    run_inputs = inputs[seed]
    privacy = (experiment_flags.privacy_config(target) if target is not None
               else dp_training.PrivacyConfig())
    config = experiment_flags.train_config(algorithm or None, seed, privacy)
    print(f'== epsilon {target if target is not None else "-"} '
          f'{algorithm or FLAGS.algorithm}, seed {seed}', flush=True)
    return training.run(run_inputs.data, run_inputs.keras_model_fn, config,
                        output_dir=run_dir, extra_summary=run_inputs.summary_fields(),
                        log=lambda line: None)

  _, markdown = privacy_sweep.run_privacy_sweep(
      run_fn, epsilons, seeds, output_dir,
      title=f'{FLAGS.dataset}, {FLAGS.algorithm}, --dp={FLAGS.dp}')
  print(markdown)
  print(f'table and plot: {output_dir}/privacy_sweep.{{md,json,png}}')


if __name__ == '__main__':
  app.run(main)
