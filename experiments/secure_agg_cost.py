"""Benchmark: accuracy, bytes per hospital per round and round time of secure
aggregation against the bit width, next to plain FedAvg.

    python -m experiments.secure_agg_cost --dataset=heart_disease --data_dir=../shared/data \
        --bit_widths=8,12,16,20,32 --modes=tff,masking --seeds=3

Prints the table and writes secure_agg_cost.md and .json under --output_dir.
"""

import dataclasses
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tff_med import experiment_flags
from tff_med import training
from tff_med.data import DataError
from tff_med.secure_agg import cost_table

_BIT_WIDTHS = flags.DEFINE_list('bit_widths', ['8', '12', '16', '20', '32'], 'Bit widths b.')
_MODES = flags.DEFINE_list('modes', ['tff', 'masking'], 'Secure aggregation modes.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Default runs/secure_agg_cost_DATASET.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.client_weighting is None:
    FLAGS.client_weighting = 'uniform'  # Secure sums are unweighted: compare like with like.
  try:
    bits = [int(b) for b in _BIT_WIDTHS.value]
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    base = experiment_flags.train_config(seed=FLAGS.seed)
    for mode in ['none'] + _MODES.value:
      for width in bits:
        dataclasses.replace(base, secure_agg=dataclasses.replace(
            base.secure_agg, mode=mode, bits=width)).validate(
                len(inputs[FLAGS.seed].data.hospitals))
  except (DataError, ValueError) as e:
    sys.exit(f'error: {e}')
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'secure_agg_cost_{FLAGS.dataset}')
  os.makedirs(output_dir, exist_ok=True)

  def run_fn(mode, width, seed, run_dir):
    print(f'== {mode} {width} bits, seed {seed}', flush=True)
    config = experiment_flags.train_config(seed=seed)
    config = dataclasses.replace(config, secure_agg=dataclasses.replace(
        config.secure_agg, mode=mode, bits=width or config.secure_agg.bits))
    return training.run(inputs[seed].data, inputs[seed].keras_model_fn, config,
                        output_dir=run_dir, extra_summary=inputs[seed].summary_fields(),
                        log=lambda line: None)

  print(cost_table.run_cost_table(run_fn, _MODES.value, bits, list(inputs), output_dir,
                                  f'Secure aggregation cost: {FLAGS.dataset}, '
                                  f'{FLAGS.algorithm}'))


if __name__ == '__main__':
  app.run(main)
