"""Local-only, pooled and federated training on the same data and seeds, as a table.

    python -m experiments.compare --dataset=heart_disease --data_dir=../shared/data --seeds=5

Prints the table and writes comparison.md, comparison.json and every run's
outputs (TensorBoard, CSV, model, summary) under --output_dir, one folder per
method and seed (METHOD/seedK); a run stopped half way resumes when the command
is run again.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med import compare
from tff_med import grid
from tff_med.algorithms import ALGORITHMS
from tff_med.data import DataError

_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_ALGORITHMS = flags.DEFINE_list('algorithms', list(ALGORITHMS), 'Methods to compare.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the table and runs go; '
                                  'default runs/compare_DATASET.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.
_OVERRIDES = {'algorithm.name': '--algorithms'}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'compare_{FLAGS.dataset}')
  try:
    experiment_flags.check_output_dir(output_dir)
    experiment_flags.refuse_flags(('algorithm',), 'it trains each of --algorithms')
    experiment_flags.check_algorithm_flags(_ALGORITHMS.value, '--algorithms')
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    settings = {a: experiment_flags.train_config(a) for a in _ALGORITHMS.value}
    planned = grid.plan_grid(settings, inputs)
  except (DataError, ValueError) as e:
    experiment_flags.exit_with_error(e, _OVERRIDES)
  summaries = experiment_flags.run_grid(settings, inputs, output_dir, planned)
  data = next(iter(inputs.values())).data
  _, markdown = compare.write_comparison(summaries, list(inputs), output_dir, data.hospitals,
                                         title=f'{FLAGS.dataset}: {data.description}')
  print(markdown)
  print(f'table: {output_dir}/comparison.md (.json); '
        f'TensorBoard: tensorboard --logdir {output_dir}')


if __name__ == '__main__':
  app.run(main)
