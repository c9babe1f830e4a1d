r"""Benchmark: accuracy, bytes per hospital per round and round time of secure
aggregation against the bit width, next to plain FedAvg.

    python -m experiments.secure_agg_cost --dataset=heart_disease --data_dir=../shared/data \
        --bit_widths=8,12,16,20,32 --modes=tff,masking --seeds=3

Prints the table and writes secure_agg_cost.md and .json under --output_dir.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med import grid
from tff_med.data import DataError
from tff_med.secure_agg import cost_table

_BIT_WIDTHS = flags.DEFINE_list('bit_widths', ['8', '12', '16', '20', '32'], 'Bit widths b.')
_MODES = flags.DEFINE_list('modes', ['tff', 'masking'], 'Secure aggregation modes.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Default runs/secure_agg_cost_DATASET.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.
_OVERRIDES = {'secure_agg.mode': '--modes', 'secure_agg.bits': '--bit_widths'}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.client_weighting is None:
    FLAGS.client_weighting = 'uniform'  # Secure sums are unweighted: compare like with like.
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'secure_agg_cost_{FLAGS.dataset}')
  try:
    experiment_flags.check_output_dir(output_dir)
    experiment_flags.refuse_flags(('secure_agg', 'secagg_bits'),
                                  'it trains each of --modes at each of --bit_widths')
    rows = cost_table.cost_settings(_MODES.value, experiment_flags.parse_list('bit_widths', int))
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    settings = {cost_table.setting_name(mode, width): experiment_flags.train_config(
        secure_agg=mode, secagg_bits=width or None) for mode, width in rows}
    planned = grid.plan_grid(settings, inputs)
  except (DataError, ValueError) as e:
    experiment_flags.exit_with_error(e, _OVERRIDES)
  summaries = experiment_flags.run_grid(settings, inputs, output_dir, planned)
  print(cost_table.write_cost_table(summaries, rows, list(inputs), output_dir,
                                    f'Secure aggregation cost: {FLAGS.dataset}, '
                                    f'{FLAGS.algorithm}'))


if __name__ == '__main__':
  app.run(main)
