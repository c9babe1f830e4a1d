"""What privacy bought and what it cost, in one report.

    python -m experiments.privacy_report --dataset=heart_disease --data_dir=../shared/data

Trains the non-private model, record-level DP (or --dp=client) at each of
--epsilons, and the secure-aggregation variants (TFF secure sum, masking) on the
same data and seeds; audits each with membership-inference attacks; writes
privacy_report.md, .html, .json and .png under --output_dir. All settings share
one set of hyperparameters (the --dp defaults of the dataset) and uniform
hospital weighting, so that only the privacy mechanism differs.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from experiments import flags as experiment_flags
from tff_med import grid
from tff_med import privacy_report
from tff_med.audit import run_audit
from tff_med.data import DataError
from tff_med.privacy.dp_account import PrivacyConfig

_EPSILONS = flags.DEFINE_list('epsilons', ['1', '4', '16'], 'Target epsilons of the DP runs.')
_SEEDS = flags.DEFINE_integer('seeds', 2, 'Number of seeds: --seed, --seed+1, ...')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Default runs/privacy_report_DATASET.')
FLAGS = flags.FLAGS
flags.adopt_module_key_flags(experiment_flags)  # --help lists them.
_OVERRIDES = {'privacy.target_epsilon': '--epsilons'}


def _config(setting: privacy_report.Setting):
  privacy = (experiment_flags.privacy_config(setting.target_epsilon)
             if setting.target_epsilon is not None else PrivacyConfig())
  return experiment_flags.train_config(privacy=privacy, secure_agg=setting.secure_agg)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.dp == 'none':
    FLAGS.dp = 'record'
  if FLAGS.client_weighting is None:
    FLAGS.client_weighting = 'uniform'
  output_dir = _OUTPUT_DIR.value or os.path.join('runs', f'privacy_report_{FLAGS.dataset}')
  try:
    experiment_flags.check_output_dir(output_dir)
    experiment_flags.refuse_flags(('target_epsilon', 'noise_multiplier', 'secure_agg'),
                                  'it trains each of --epsilons and every --secure_agg mode')
    settings = [privacy_report.Setting('no DP')]
    settings += [privacy_report.Setting(f'DP eps={e:g}', e)
                 for e in experiment_flags.parse_list('epsilons', float)]
    settings += [privacy_report.Setting(f'secure agg {m}', None, m) for m in ('tff', 'masking')]
    inputs = experiment_flags.load_inputs_per_seed(_SEEDS.value)
    configs = {privacy_report.folder(s): _config(s) for s in settings}
    planned = grid.plan_grid(configs, inputs)
  except (DataError, ValueError) as e:
    experiment_flags.exit_with_error(e, _OVERRIDES)
  summaries = experiment_flags.run_grid(configs, inputs, output_dir, planned)
  audits = {name: [run_audit.audit_run(grid.run_dir(output_dir, name, seed), FLAGS.data_dir,
                                       log=lambda line: None, delta=FLAGS.target_delta)
                   for seed in inputs] for name in configs}
  data = next(iter(inputs.values())).data
  notes = (f'{data.description}. {FLAGS.algorithm}, --dp={FLAGS.dp} for the DP rows; '
           f'{len(inputs)} seeds (mean ± std); attacks: threshold on loss and confidence, '
           'logistic regression, MLP (best by AUC); members = a hospital\'s training '
           'records, non-members = its test records. TPR at 1% FPR needs >= 100 '
           'non-members (n/a otherwise). ε lower bound: a confidence lower bound on ε at the '
           'DP rows\' δ (split-half Clopper-Pearson over the attacks; 0 = no '
           'evidence, not proof of privacy; in brackets the most these records could '
           'certify). The local-only model is the first hospital\'s.')
  markdown = privacy_report.write_privacy_report(
      summaries, audits, settings, output_dir, f'Privacy report: {FLAGS.dataset}', notes)
  print(markdown)
  print(f'report: {output_dir}/privacy_report.{{md,html,json,png}}')


if __name__ == '__main__':
  app.run(main)
