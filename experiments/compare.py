"""Local-only, pooled and federated training on the same data and seeds, as a table.

    python -m experiments.compare --dataset=heart_disease --data_dir=../shared/data --seeds=5

Prints the table and writes comparison.md, comparison.json and every run's
outputs (TensorBoard, CSV, model, summary) under --output_dir.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tff_med import compare
from tff_med import experiment_flags
from tff_med import training
from tff_med.algorithms import ALGORITHMS
from tff_med.data import DataError

_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_ALGORITHMS = flags.DEFINE_list('algorithms', list(ALGORITHMS), 'Methods to compare.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the table and runs go; '
                                  'default runs/compare_DATASET.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    unknown = set(_ALGORITHMS.value) - set(ALGORITHMS)
    if unknown:
      raise ValueError(f'--algorithms: unknown {sorted(unknown)}')
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    seeds = list(inputs)
    for algorithm in _ALGORITHMS.value:
      experiment_flags.train_config(algorithm).validate(len(inputs[seeds[0]].data.hospitals))
  except (DataError, ValueError) as e:
    sys.exit(f'error: {e}')
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'compare_{FLAGS.dataset}')
  os.makedirs(output_dir, exist_ok=True)

  def run_fn(algorithm, seed, run_dir):
    run_inputs = inputs[seed]
    print(f'== {algorithm}, seed {seed}', flush=True)
    return training.run(run_inputs.data, run_inputs.keras_model_fn,
                        experiment_flags.train_config(algorithm, seed), output_dir=run_dir,
                        extra_summary=run_inputs.summary_fields(), log=lambda line: None)

  data = inputs[seeds[0]].data
  _, markdown = compare.run_comparison(
      run_fn, _ALGORITHMS.value, seeds, output_dir, data.hospitals,
      title=f'{FLAGS.dataset}: {data.description}')
  print(markdown)
  print(f'table: {output_dir}/comparison.md (.json); '
        f'TensorBoard: tensorboard --logdir {output_dir}')


if __name__ == '__main__':
  app.run(main)
