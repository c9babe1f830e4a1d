r"""Robust aggregation against a simulated bad hospital: every defence × attack, as tables.

    python -m experiments.robustness --dataset=heart_disease --seeds=5 \
        --output_dir=runs/robustness_heart

Trains --algorithm (FedAvg by default, with the dataset's defaults) once per
--defences value (--robust) × --attacks value (--attack) × seed, with --attacker
(default: the dataset's first hospital) attacking. Prints the tables and writes
robustness.md, robustness.json and every run's outputs under --output_dir, one
folder per pair and seed (DEFENCE+ATTACK/seedK); a pair the library refuses is
reported as refused with the reason; a run stopped half way resumes when the
command is run again.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med import robustness
from tff_med.algorithms import BASELINES
from tff_med.config import ATTACKS, ROBUST
from tff_med.data import DataError

_DEFENCES = flags.DEFINE_list('defences', list(ROBUST), 'Robust aggregations to compare '
                              f'(--robust values: {", ".join(ROBUST)}).')
_ATTACKS = flags.DEFINE_list('attacks', list(ATTACKS), 'Attacks to simulate (--attack values: '
                             f'{", ".join(ATTACKS)}; none = no attack).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Number of seeds: --seed, --seed+1, ...')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the tables and runs go; '
                                  'default runs/robustness_DATASET.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.
_OVERRIDES = {'robust.name': '--defences', 'attack.name': '--attacks'}
# Flag -> the --defences / --attacks values that read it.
_READ_BY = {'robust_norm': ('--defences', ('norm_bound', 'zeroing')),
            'robust_trim': ('--defences', ('trimmed_mean',)),
            'attack_scale': ('--attacks', ('scaled_update', 'random_update')),
            'attacker': ('--attacks', tuple(a for a in ATTACKS if a != 'none'))}


def _check_flags(defences, attacks) -> None:
  """ValueError for a flag that no pair of the grid reads, or a repeated value."""
  experiment_flags.refuse_flags(('robust', 'attack'),
                                'it trains each of --defences with each of --attacks')
  for flag, values, known in (('--defences', defences, ROBUST),
                              ('--attacks', attacks, ATTACKS)):
    for value in values:
      if value not in known:
        raise ValueError(f'{flag}: {value!r} is not one of {", ".join(known)}')
    if not values:
      raise ValueError(f'{flag}: give at least one value')
    if len(set(values)) != len(values):
      raise ValueError(f'{flag}={",".join(values)}: a value is repeated')
  if FLAGS.algorithm in BASELINES:
    raise ValueError(f'--algorithm={FLAGS.algorithm} is a baseline: it has no aggregation '
                     'to defend; choose a federated algorithm')
  chosen = {'--defences': defences, '--attacks': attacks}
  for name, (list_flag, readers) in _READ_BY.items():
    if FLAGS[name].present and not set(readers) & set(chosen[list_flag]):
      raise ValueError(f'--{name} applies to {list_flag} {" or ".join(readers)} only, not '
                       f'{list_flag}={",".join(chosen[list_flag])}: it would be ignored; '
                       'leave it out')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'robustness_{FLAGS.dataset}')
  defences, attacks = _DEFENCES.value, _ATTACKS.value
  try:
    experiment_flags.check_output_dir(output_dir)
    _check_flags(defences, attacks)
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    data = next(iter(inputs.values())).data
    attacker = FLAGS.attacker or data.hospitals[0]
    if attacker not in data.hospitals:
      raise ValueError(f'--attacker={attacker}: name one of the hospitals '
                       f'({", ".join(data.hospitals)})')
    settings = robustness.settings(
        experiment_flags.train_config(), defences, attacks, attacker,
        robust_norm=FLAGS.robust_norm, robust_trim=FLAGS.robust_trim,
        attack_scale=FLAGS.attack_scale)
    planned, refused = robustness.plan(settings, inputs)
  except (DataError, ValueError) as e:
    experiment_flags.exit_with_error(e, _OVERRIDES)
  refused = {name: experiment_flags.flag_message(reason, _OVERRIDES)
             for name, reason in refused.items()}
  for name, reason in refused.items():
    print(f'refused: {name}: {reason}', flush=True)
  trained = {name: s for name, s in settings.items() if name not in refused}
  summaries = (experiment_flags.run_grid(trained, inputs, output_dir, planned)
               if trained else {})
  os.makedirs(output_dir, exist_ok=True)
  _, markdown = robustness.write_robustness(
      summaries, refused, defences, attacks, attacker, list(inputs), output_dir,
      title=f'{FLAGS.dataset}: {data.description}; {FLAGS.algorithm}',
      attack_scale=FLAGS.attack_scale)
  print(markdown)
  print(f'tables: {output_dir}/robustness.md (.json); '
        f'TensorBoard: tensorboard --logdir {output_dir}')


if __name__ == '__main__':
  app.run(main)
