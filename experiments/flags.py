"""absl flags shared by the experiment binaries, their dataset-dependent defaults,
and the names of config fields as flags.

A flag left unset takes its default from `DATASET_DEFAULTS[--dataset]` (and, for
`--server_lr`, from `SERVER_LR_DEFAULTS[--algorithm]`), so that
`python -m experiments.train --dataset=heart_disease --algorithm=fedadam` runs the
tuned set-up that the README's tables report.

The library's errors name config fields (`privacy.l2_norm_clip=0: ...`);
`flag_message` rewrites them into this module's flag names (`--l2_norm_clip=0:
...`) and `exit_with_error` prints the result and exits.
"""

import dataclasses
import functools
import logging as std_logging
import os
import re
import sys
from collections.abc import Mapping

from absl import flags
from absl import logging
import tensorflow as tf

from tff_med import data as data_lib
from tff_med.data import heart_disease
from tff_med import grid
from tff_med import run_state
from tff_med.algorithms import ALGORITHMS, BASELINES, CLIENT_WEIGHTINGS, AlgorithmConfig
from tff_med.config import ATTACKS, ROBUST, AttackConfig, RobustConfig, TrainConfig
from tff_med.models import MODELS, ModelConfig, build_keras_model
from tff_med.models.keras_models import READ_BY
from tff_med import personalization
from tff_med.privacy import dp_account
from tff_med.secure_agg import config as secure_agg_config

# Per dataset: the defaults behind the README's results.
DATASET_DEFAULTS = {
    'heart_disease': dict(model='logreg', rounds=50, local_epochs=1, batch_size=4,
                          client_lr=0.01, eval_every=10, client_weighting='uniform'),
    'breast_cancer': dict(model='logreg', rounds=10, local_epochs=1, batch_size=16,
                          client_lr=0.05, eval_every=5),
    'breastmnist': dict(model='cnn', rounds=30, local_epochs=3, batch_size=32,
                        client_lr=0.05, eval_every=5),
    'pneumoniamnist': dict(model='cnn', rounds=50, local_epochs=2, batch_size=32,
                           client_lr=0.1, eval_every=5, num_hospitals=10,
                           partition='dirichlet'),
    'csv': dict(model='logreg', rounds=50, local_epochs=1, batch_size=16,
                client_lr=0.05, eval_every=10),
}
# With --dp: DP-SGD wants large batches (signal grows with the batch, the noise
# does not), few steps (each costs privacy) and larger steps.
DP_DEFAULTS = {
    'heart_disease': dict(rounds=20, batch_size=64, client_lr=0.5, l2_norm_clip=0.5),
}
# Server step size per algorithm: 1.0 applies FedAvg's plain average.
SERVER_LR_DEFAULTS = {'fedavg': 1.0, 'fedprox': 1.0, 'fedadam': 0.05, 'fedyogi': 0.05,
                      'fedadagrad': 0.1, 'local': 1.0, 'pooled': 1.0}
# Defaults shared by the data sets (DATASET_DEFAULTS overrides them).
_COMMON_DEFAULTS = {'num_hospitals': 3, 'partition': 'profiles',
                    'client_weighting': 'num_examples', 'l2_norm_clip': 1.0}
# Data sets whose hospitals are simulated (num_hospitals, partition apply).
_SIMULATED = data_lib.SIMULATED


def _depends(name: str, datasets=tuple(DATASET_DEFAULTS)) -> str:
  """'Default: heart_disease 50 (with --dp: 20), breast_cancer 10, ...', from the tables."""
  values = []
  for dataset in datasets:
    value = DATASET_DEFAULTS[dataset].get(name, _COMMON_DEFAULTS.get(name))
    dp_value = DP_DEFAULTS.get(dataset, {}).get(name)
    if name == 'l2_norm_clip':  # Applies with --dp only.
      value, dp_value = dp_value or value, None
    values.append(f'{dataset} {value}' + (f' (with --dp: {dp_value})' if dp_value else ''))
  return 'Default: ' + ', '.join(values) + '.'

flags.DEFINE_enum('dataset', 'breast_cancer', data_lib.DATASETS,
                  'Which hospitals\' data: the four UCI heart-disease hospitals, '
                  'scikit-learn\'s Wisconsin table split into simulated hospitals '
                  '(embedded, needs no files), MedMNIST images, or your own CSV files.')
flags.DEFINE_string('data_dir', None, 'Folder with heart_disease/ and medmnist/ '
                    '(default: environment variable TFF_MED_DATA_DIR).')
flags.DEFINE_integer('num_hospitals', None, 'Simulated hospitals for breast_cancer and '
                     'MedMNIST. ' + _depends('num_hospitals', _SIMULATED))
flags.DEFINE_enum('partition', None, ['iid', 'dirichlet', 'profiles'],
                  'How records are dealt to simulated hospitals: iid; dirichlet label '
                  'skew; profiles (children\'s, general, oncology hospitals with their '
                  'own disease prevalence and shifted features). '
                  + _depends('partition', _SIMULATED))
flags.DEFINE_float('dirichlet_alpha', 0.5, 'With --partition=dirichlet: concentration of '
                   'the Dirichlet label skew; smaller is more skewed.')
flags.DEFINE_list('profile_features', [], 'For --dataset=breast_cancer --partition=profiles: '
                  'feature names shifted by hospital profiles (default: the size features; '
                  'MedMNIST images are shifted in brightness).')
flags.DEFINE_list('csv_files', [], 'For --dataset=csv: one CSV file per hospital; the '
                  'file name (without .csv) names the hospital.')
flags.DEFINE_string('label_column', 'label', 'For --dataset=csv: the outcome column, 0/1 '
                    'or any values with --positive_label.')
flags.DEFINE_string('positive_label', None, 'For --dataset=csv: the label value that means 1 '
                    '(e.g. Yes, malignant, died); every other value means 0.')
flags.DEFINE_list('categorical_columns', [], 'For --dataset=csv: columns one-hot encoded '
                  'instead of z-scored (text columns must be listed here or dropped).')
flags.DEFINE_list('feature_columns', [], 'For --dataset=csv: the feature columns; default '
                  'every column but the label, --drop_columns and the ID columns.')
flags.DEFINE_list('drop_columns', [], 'For --dataset=csv: columns left out of the features.')
flags.DEFINE_list('id_columns', [], 'For --dataset=csv: record-identifier columns, never '
                  'trained on. Default (without --feature_columns): columns named like id, '
                  'patient_id, rownames or "Unnamed: 0" with a unique value per row, reported.')
flags.DEFINE_enum('missing', 'error', ['error', 'drop_rows'], 'For --dataset=csv: cells '
                  'that are empty or NA, NaN, ?, ...: stop with an error listing them, or '
                  'drop their rows (reporting how many per hospital).')
flags.DEFINE_string('csv_encoding', 'utf-8', 'For --dataset=csv: text encoding of the files '
                    '(e.g. cp1252 for Excel on Windows); a UTF-8 byte-order mark is dropped.')
flags.DEFINE_enum('scaling', None, ['zscore', 'public_ranges'], 'Scaling of table '
                  'features: zscore (training mean/std: statistics of the records, refused '
                  'with --dp) or public_ranges (each numeric column clipped to a declared '
                  'range and mapped to [-1, 1]: heart_disease and breast_cancer ship '
                  'theirs; CSV needs --feature_ranges). Default: public_ranges with --dp, '
                  'else zscore. Images always use pixel/255.')
flags.DEFINE_list('feature_ranges', [], 'For --dataset=csv --scaling=public_ranges: '
                  'COLUMN:LOW:HIGH for every numeric column, declared from public '
                  'knowledge (never computed from the files), e.g. age:18:100,bp:50:250.')
flags.DEFINE_enum('split', 'seeded', list(heart_disease.SPLITS), 'For heart_disease: '
                  'seeded (stratified 66/34 with --seed) or flamby (FLamby\'s own split, '
                  'random_state 43, to compare with its published results).')
flags.DEFINE_float('test_fraction', 0.34, 'For breast_cancer and csv: share of each '
                   'hospital\'s records held out for its test set (heart_disease keeps '
                   'FLamby\'s 0.34; MedMNIST uses its official test set).')
flags.DEFINE_enum('model', None, MODELS, 'logreg (FLamby\'s baseline), mlp for tables, '
                  'cnn for 28x28 images. ' + _depends('model'))
flags.DEFINE_list('hidden_units', ['64', '32'], 'With --model=mlp: hidden layer widths.')
flags.DEFINE_float('dropout', 0.0, 'With --model=mlp or cnn: dropout rate after the hidden '
                   'layers (cnn: after its pooling), in [0, 1).')
flags.DEFINE_enum('algorithm', 'fedavg', ALGORITHMS, 'Federated algorithm, or a baseline: '
                  'local (each hospital alone) or pooled (centralised on all records).')
flags.DEFINE_integer('rounds', None, 'Federated rounds (baselines: blocks of '
                     '--local_epochs epochs). ' + _depends('rounds'))
flags.DEFINE_integer('clients_per_round', 0, 'Hospitals sampled per round, uniformly '
                     'without replacement; 0 = all.')
flags.DEFINE_integer('min_clients', 0, 'k of n: a round in which fewer hospitals report '
                     'is skipped (the model stays unchanged); skipped rounds are recorded '
                     'and accounted. 0 = no minimum.')
flags.DEFINE_integer('simulate_dropouts', 0, 'Hospitals of each round\'s cohort that train '
                     'but never report (every --secure_agg mode).')
flags.DEFINE_integer('local_epochs', None, 'Passes over a hospital\'s records per round. '
                     + _depends('local_epochs'))
flags.DEFINE_integer('batch_size', None, 'Records per SGD step. ' + _depends('batch_size'))
flags.DEFINE_float('client_lr', None, 'SGD step size on each hospital (and for the '
                   'baselines). ' + _depends('client_lr'))
flags.DEFINE_float('server_lr', None, 'Federated algorithms (not local, pooled): server '
                   'optimiser step size (1.0 with FedAvg/FedProx: the plain average). '
                   'Default: ' + ', '.join(
                       f'{a} {lr}' for a, lr in SERVER_LR_DEFAULTS.items()
                       if a not in BASELINES) + '.')
flags.DEFINE_float('fedprox_mu', 0.01, 'With --algorithm=fedprox: proximal strength '
                   '(unitless).')
flags.DEFINE_enum('client_weighting', None, list(CLIENT_WEIGHTINGS), 'Weight of a '
                  'hospital\'s update in the average: its number of training records, or '
                  'uniform (hospitals count equally). ' + _depends('client_weighting'))
flags.DEFINE_integer('eval_every', None, 'Rounds between test evaluations; the last '
                     'round is always evaluated. ' + _depends('eval_every'))
flags.DEFINE_integer('seed', 0, 'Seed of the split, the partition, initial weights, '
                     'shuffling and client sampling.')
flags.DEFINE_integer('max_concurrent_computation_calls', -1, 'Cap on concurrent calls '
                     'of one computation in TFF\'s C++ runtime (bounds memory); <=0: none.')

flags.DEFINE_enum('dp', 'none', list(dp_account.LEVELS), 'Differential privacy: none; '
                  'record (DP-SGD inside each hospital, epsilon per patient record, '
                  'accounted per hospital); client (DP-FedAvg, epsilon per hospital).')
flags.DEFINE_float('noise_multiplier', None, 'Gaussian noise std / --l2_norm_clip '
                   '(unitless). Give this or --target_epsilon.')
flags.DEFINE_float('target_epsilon', None, 'Calibrate the smallest noise multiplier '
                   'whose epsilon (at --target_delta, for the run\'s rounds and '
                   'sampling) is at most this; inf = no noise.')
flags.DEFINE_float('target_delta', None, 'delta of the reported (epsilon, delta)-DP. '
                   'Default: record level, the largest power of ten below 1 / the '
                   'largest hospital\'s training rows (larger is an error); client '
                   'level, 1e-3.')
flags.DEFINE_float('l2_norm_clip', None, 'L2 clip of each per-example gradient '
                   '(record) or each hospital\'s model delta (client; initial clip '
                   'if adaptive), in parameter units. ' + _depends('l2_norm_clip'))
flags.DEFINE_float('max_epsilon', None, 'Privacy budget: stop before a round that would '
                   'raise epsilon above this, save the model and say so.')
flags.DEFINE_enum('accountant', 'rdp', ['rdp', 'pld'], 'dp_accounting accountant: '
                  'Renyi DP or privacy loss distributions (tighter).')
flags.DEFINE_enum('dp_clipping', 'fixed', list(dp_account.CLIPPINGS), 'Client level: '
                  'fixed clip, or adaptive (quantile-tracking; needs larger cohorts).')
flags.DEFINE_enum('dp_schedule', 'every_round', list(dp_account.SCHEDULES), 'Record '
                  'level, for experiments: noise every round, only the first, or every '
                  '--dp_every rounds. Un-noised rounds make epsilon infinite.')
flags.DEFINE_integer('dp_every', 1, 'With --dp_schedule=every_n: rounds between noised '
                     'rounds.')
flags.DEFINE_enum('secure_agg', 'none', list(secure_agg_config.MODES), 'How hospital '
                  'updates reach the server: none (in the clear); tff (TFF secure-sum '
                  'processes: quantised, simulated as a plain sum; refused with '
                  '--dp=client); masking (pairwise-masking protocol: the server only sees '
                  'masked vectors; with --dp=client, distributed discrete Gaussian noise).')
flags.DEFINE_integer('secagg_bits', 16, 'Bit width b of the secure modular sum (2-32).')
flags.DEFINE_float('secagg_clip', 1.0, 'Each update value is clipped to [-clip, clip] '
                   'before quantisation (parameter units).')
flags.DEFINE_integer('secagg_threshold', 0, 'Masking: Shamir threshold t; rounds with '
                     'fewer survivors abort. 0 = ceil(2n/3) of the cohort.')
flags.DEFINE_integer('secagg_colluders', None, 'Masking with --dp=client: hospitals '
                     'assumed to collude with the server (0..t-2); each hospital\'s noise '
                     'share is sized so that a round at the threshold keeps the planned '
                     'noise without them. Default t-2.')
flags.DEFINE_enum('personalize', 'none', list(personalization.METHODS), 'After the last '
                  'round: none, or finetune (each hospital fine-tunes the global model on '
                  'its own training records; personalized_model/HOSPITAL, global vs '
                  'personalised test metrics in summary.json). With --dp=record it runs '
                  'DP-SGD and is charged to each hospital\'s epsilon; with --dp=client it '
                  'runs without DP (the model stays at its hospital).')
flags.DEFINE_integer('personalize_epochs', personalization.PersonalizeConfig.epochs,
                     'With --personalize=finetune: passes over each hospital\'s training '
                     'records, in batches of --batch_size.')
flags.DEFINE_float('personalize_lr', None, 'With --personalize=finetune: SGD step size '
                   '(default: --client_lr).')
flags.DEFINE_enum('robust', 'none', list(ROBUST), 'How the server combines the hospitals\' '
                  'updates against a bad hospital: none (the weighted mean); norm_bound (each '
                  'update scaled down to L2 norm --robust_norm, or when unset TFF\'s adaptive '
                  'estimate of the 0.8 quantile of the norms, then the mean; TFF\'s '
                  'clipping_factory); zeroing (an update whose largest absolute value is '
                  'above --robust_norm, or when unset 2 x TFF\'s adaptive 0.98 quantile of '
                  'those + 1, counts as zeros; TFF\'s zeroing_factory); median (coordinate-wise); '
                  'trimmed_mean (coordinate-wise, --robust_trim dropped at each end). The '
                  'order statistics count hospitals equally. Needs updates in the clear: '
                  'refused with --secure_agg and --dp=client.')
flags.DEFINE_float('robust_norm', None, 'With --robust=norm_bound: the bound on each '
                   'update\'s L2 norm; zeroing: the threshold on its largest absolute value '
                   '(parameter units); default adaptive.')
flags.DEFINE_integer('robust_trim', 1, 'With --robust=trimmed_mean: updates dropped at each '
                     'end of every coordinate (needs more than 2 x this many hospitals).')
flags.DEFINE_enum('attack', 'none', list(ATTACKS), 'Research only: simulate a bad hospital '
                  '(--attacker): label_flip (trains on flipped labels), scaled_update (sends '
                  'its update x --attack_scale), random_update (Gaussian noise, std '
                  '--attack_scale x its update\'s RMS), stale (resends its first update every '
                  'round). Recorded in summary.json.')
flags.DEFINE_string('attacker', None, 'With --attack: the hospital that attacks.')
flags.DEFINE_float('attack_scale', AttackConfig.scale, 'With --attack=scaled_update or '
                   'random_update: the factor (unitless).')
flags.DEFINE_bool('resume', True, 'If the output folder holds saved program state, '
                  'continue from its last completed round (a finished run is not trained '
                  'again).')
flags.DEFINE_bool('overwrite', False, 'Start again: delete the saved program state in the '
                  'output folder first.')

FLAGS = flags.FLAGS

# The binaries print their own progress; TF's and absl's INFO lines drown it
# (--verbosity=0 brings them back).
logging.set_verbosity(logging.WARNING)
tf.get_logger().setLevel('ERROR')


def _flag_or_default(name: str):
  value = getattr(FLAGS, name)
  if value is not None:
    return value
  if FLAGS.dp != 'none' and name in DP_DEFAULTS.get(FLAGS.dataset, {}):
    return DP_DEFAULTS[FLAGS.dataset][name]
  return DATASET_DEFAULTS[FLAGS.dataset].get(name, _COMMON_DEFAULTS.get(name))


def data_config(seed: int | None = None) -> data_lib.DataConfig:
  """The DataConfig the flags describe (`seed` overrides --seed)."""
  if FLAGS.scaling and FLAGS.dataset in ('breastmnist', 'pneumoniamnist'):
    raise ValueError(f'--scaling={FLAGS.scaling} applies to tables; {FLAGS.dataset} images '
                     'are always scaled as pixel / 255')
  config = data_lib.DataConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      num_hospitals=_flag_or_default('num_hospitals'),
      partition=_flag_or_default('partition'), dirichlet_alpha=FLAGS.dirichlet_alpha,
      profile_features=tuple(FLAGS.profile_features), csv_files=tuple(FLAGS.csv_files),
      label_column=FLAGS.label_column, categorical_columns=tuple(FLAGS.categorical_columns),
      feature_columns=tuple(FLAGS.feature_columns), drop_columns=tuple(FLAGS.drop_columns),
      id_columns=tuple(FLAGS.id_columns), positive_label=FLAGS.positive_label,
      missing=FLAGS.missing, csv_encoding=FLAGS.csv_encoding,
      test_fraction=FLAGS.test_fraction, seed=FLAGS.seed if seed is None else seed,
      split=FLAGS.split,
      scaling=FLAGS.scaling or ('public_ranges' if FLAGS.dp != 'none' else 'zscore'),
      feature_ranges=_feature_ranges())
  # A flag the data set would not read is an error even at its default value (the
  # library's own check sees values other than the default only).
  for field, reason in data_lib.unread_fields(config).items():
    _refuse_present(FIELD_FLAGS[f'data.{field}'][2:], reason)
  return config


def _flag_text(name: str) -> str:
  """`--NAME=VALUE` as given (a list flag's items joined by commas)."""
  value = FLAGS[name].value
  return f'--{name}=' + (','.join(value) if isinstance(value, list) else str(value))


def _refuse_present(name: str, reason: str) -> None:
  """ValueError when flag `name` is given: `reason` says why the run ignores it
  (config fields in it are named by their flags)."""
  if FLAGS[name].present:
    raise ValueError(flag_message(f'{_flag_text(name)} {reason}: it would be ignored; '
                                  'leave it out'))


def _feature_ranges() -> tuple[tuple[str, float, float], ...]:
  """--feature_ranges as (column, low, high) triples; ValueError naming the flag."""
  ranges = []
  for item in FLAGS.feature_ranges:
    column, _, bounds = item.rpartition(':')
    column, _, low = column.rpartition(':')
    try:
      ranges.append((column, float(low), float(bounds)))
    except ValueError:
      raise ValueError(f'--feature_ranges: {item!r} is not COLUMN:LOW:HIGH') from None
    if not column:
      raise ValueError(f'--feature_ranges: {item!r} is not COLUMN:LOW:HIGH')
  return tuple(ranges)


def model_config() -> ModelConfig:
  try:
    hidden_units = tuple(int(u) for u in FLAGS.hidden_units)
  except ValueError as e:
    raise ValueError(f'--hidden_units={",".join(FLAGS.hidden_units)}: '
                     'expected integers, e.g. 64,32') from e
  name = _flag_or_default('model')
  for flag, models in READ_BY.items():
    if name not in models:
      _refuse_present(flag, f'applies to {" and ".join("--model=" + m for m in models)} '
                            f'only, not --model={name}')
  return ModelConfig(name=name, hidden_units=hidden_units, dropout=FLAGS.dropout)


def train_config(algorithm: str | None = None, seed: int | None = None,
                 privacy: dp_account.PrivacyConfig | None = None,
                 secure_agg: str | None = None, secagg_bits: int | None = None
                 ) -> TrainConfig:
  """The TrainConfig the flags describe (`algorithm`, `seed`, `privacy`, the
  secure-aggregation mode `secure_agg` and `secagg_bits` override the flags).

  --fedprox_mu reaches FedProx runs only and --server_lr federated runs only (a
  grid binary passes them to the runs that read them); without `algorithm`, one
  of them that --algorithm would ignore is an error."""
  if algorithm is None:
    check_algorithm_flags([FLAGS.algorithm])
  algorithm = algorithm or FLAGS.algorithm
  if secure_agg is None:
    _check_unused(SECURE_AGG_FLAGS, 'secure_agg')
  _check_unused(PERSONALIZE_FLAGS, 'personalize')
  server_lr = (FLAGS.server_lr if FLAGS.server_lr is not None and algorithm not in BASELINES
               else SERVER_LR_DEFAULTS.get(algorithm, AlgorithmConfig.server_lr))
  fedprox_mu = FLAGS.fedprox_mu if algorithm == 'fedprox' else AlgorithmConfig.fedprox_mu
  return TrainConfig(
      algorithm=AlgorithmConfig(name=algorithm, client_lr=_flag_or_default('client_lr'),
                                server_lr=server_lr, fedprox_mu=fedprox_mu,
                                client_weighting=_flag_or_default('client_weighting')),
      rounds=_flag_or_default('rounds'), clients_per_round=FLAGS.clients_per_round,
      min_clients=FLAGS.min_clients, dropouts=FLAGS.simulate_dropouts,
      local_epochs=_flag_or_default('local_epochs'),
      batch_size=_flag_or_default('batch_size'), eval_every=_flag_or_default('eval_every'),
      seed=FLAGS.seed if seed is None else seed,
      max_concurrent_computation_calls=FLAGS.max_concurrent_computation_calls,
      privacy=privacy or privacy_config(),
      secure_agg=secure_agg_config.SecureAggConfig(
          mode=secure_agg or FLAGS.secure_agg,
          bits=FLAGS.secagg_bits if secagg_bits is None else secagg_bits,
          clip=FLAGS.secagg_clip, threshold=FLAGS.secagg_threshold,
          colluders=FLAGS.secagg_colluders),
      personalize=personalization.PersonalizeConfig(
          method=FLAGS.personalize, epochs=FLAGS.personalize_epochs, lr=FLAGS.personalize_lr),
      robust=RobustConfig(FLAGS.robust, FLAGS.robust_norm, FLAGS.robust_trim),
      attack=AttackConfig(FLAGS.attack, FLAGS.attacker, FLAGS.attack_scale))


def check_algorithm_flags(algorithms, flag: str = '--algorithm') -> None:
  """ValueError when --fedprox_mu or --server_lr is given but none of the runs'
  `algorithms` (listed by flag `flag`) reads it."""
  runs = f'not {flag}={",".join(algorithms)}'
  if 'fedprox' not in algorithms:
    _refuse_present('fedprox_mu', f'applies to --algorithm=fedprox only, {runs}')
  if all(a in BASELINES for a in algorithms):
    _refuse_present('server_lr', f'applies to the federated algorithms only, {runs} (a '
                                 'baseline has no server optimiser)')


# Flags that apply only with --dp=record or --dp=client, only with a secure
# aggregation, and only with --personalize=finetune: given without them, even at
# their default value, they are an error.
PRIVACY_FLAGS = ('noise_multiplier', 'target_epsilon', 'target_delta', 'l2_norm_clip',
                 'max_epsilon', 'accountant', 'dp_clipping', 'dp_schedule', 'dp_every')
SECURE_AGG_FLAGS = ('secagg_bits', 'secagg_clip', 'secagg_threshold', 'secagg_colluders')
PERSONALIZE_FLAGS = ('personalize_epochs', 'personalize_lr')


def _check_unused(names, mode_flag: str) -> None:
  """ValueError when one of flags `names` is given while `mode_flag` is none."""
  if getattr(FLAGS, mode_flag) != 'none':
    return
  for name in names:
    if FLAGS[name].present:
      raise ValueError(f'--{name}={FLAGS[name].value} is set but '
                       f'--{mode_flag}=none: it would be ignored; choose a --{mode_flag} '
                       'mode or leave it out')


def privacy_config(target_epsilon: float | None = None) -> dp_account.PrivacyConfig:
  """The PrivacyConfig the flags describe (`target_epsilon` overrides the flag).

  Raises:
    ValueError: a privacy flag given with --dp=none.
  """
  _check_unused(PRIVACY_FLAGS, 'dp')
  return dp_account.PrivacyConfig(
      level=FLAGS.dp, noise_multiplier=FLAGS.noise_multiplier,
      l2_norm_clip=_flag_or_default('l2_norm_clip'),
      target_epsilon=FLAGS.target_epsilon if target_epsilon is None else target_epsilon,
      target_delta=FLAGS.target_delta, max_epsilon=FLAGS.max_epsilon,
      accountant=FLAGS.accountant, clipping=FLAGS.dp_clipping, schedule=FLAGS.dp_schedule,
      every=FLAGS.dp_every)


def refuse_flags(names, reason: str) -> None:
  """ValueError when one of flags `names`, which this binary does not read, is given."""
  for name in names:
    if FLAGS[name].present:
      raise ValueError(f'--{name} is not used by this binary: {reason}')


def check_output_dir(path: str, flag: str = '--output_dir') -> str:
  """`path` if it is a folder or can be made one; ValueError naming `flag`
  otherwise (before any data is loaded). Creates nothing."""
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise ValueError(f'{flag}={path}: is a file, not a folder')
    if not os.access(path, os.W_OK | os.X_OK):
      raise ValueError(f'{flag}={path}: the folder is not writable')
    return path
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'{flag}={path}: cannot create it: {parent} is a file')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f'{flag}={path}: cannot create it in {parent} (not writable)')
  return path


def load_inputs_per_seed(num_seeds: int) -> dict:
  """{seed: load_run_inputs(seed)} for seeds --seed, --seed+1, ... (`num_seeds` of them).

  Raises:
    DataError, ValueError: as `load_run_inputs`, or num_seeds < 1 (names --seeds).
  """
  if num_seeds < 1:
    raise ValueError(f'--seeds={num_seeds}: must be at least 1')
  return {FLAGS.seed + k: load_run_inputs(FLAGS.seed + k) for k in range(num_seeds)}


@dataclasses.dataclass(frozen=True)
class RunInputs:
  """One seed's data and model, and what summary.json records of them (so that a
  finished run can be reloaded, e.g. by experiments.audit). `data_config`: None
  for hospital nodes' data (`remote.node_data.NodeData`), read from no flag."""
  data: data_lib.FederatedData
  keras_model_fn: functools.partial
  model_config: ModelConfig
  data_config: data_lib.DataConfig | None

  def summary_fields(self) -> dict:
    return {'model': self.model_config.name,
            'model_config': dataclasses.asdict(self.model_config),
            **({'data_config': dataclasses.asdict(self.data_config)}
               if self.data_config else {})}


def model_inputs(data: data_lib.FederatedData, config: data_lib.DataConfig | None = None,
                 seed: int | None = None) -> RunInputs:
  """`data` with the model the flags describe (initial weights from `seed`,
  default --seed), validated: ValueError if the model does not fit the data."""
  model = model_config()
  keras_model_fn = functools.partial(build_keras_model, model, data.feature_shape,
                                     FLAGS.seed if seed is None else seed)
  keras_model_fn()  # Fails now, not mid-run, if the model does not fit the data.
  return RunInputs(data, keras_model_fn, model, config)


def load_run_inputs(seed: int | None = None) -> RunInputs:
  """The data and model the flags describe, validated.

  Raises:
    DataError, ValueError: bad data or flags, naming the culprit; raised before
      any training.
  """
  config = data_config(seed)
  return model_inputs(data_lib.load(config), config, config.seed)


def parse_list(flag_name: str, convert=float) -> list:
  """The values of list flag `flag_name`, each converted (float, int); ValueError
  naming the flag."""
  values = []
  for item in getattr(FLAGS, flag_name):
    try:
      values.append(convert(item))
    except ValueError:
      raise ValueError(f'--{flag_name}: {item!r} is not {convert.__name__}') from None
  if not values:
    raise ValueError(f'--{flag_name}: give at least one value')
  return values


# Config field (a dotted path into TrainConfig; DataConfig fields under `data.`)
# -> the flag that sets it. A field not listed here is set by `--<last part>`.
_RENAMED = {
    'algorithm.name': '--algorithm',
    'dropouts': '--simulate_dropouts',
    'privacy.level': '--dp',
    'privacy.clipping': '--dp_clipping',
    'privacy.schedule': '--dp_schedule',
    'privacy.every': '--dp_every',
    'secure_agg.mode': '--secure_agg',
    'secure_agg.bits': '--secagg_bits',
    'secure_agg.clip': '--secagg_clip',
    'secure_agg.threshold': '--secagg_threshold',
    'secure_agg.colluders': '--secagg_colluders',
    'personalize.method': '--personalize',
    'personalize.epochs': '--personalize_epochs',
    'personalize.lr': '--personalize_lr',
    'robust.name': '--robust',
    'robust.norm': '--robust_norm',
    'robust.trim': '--robust_trim',
    'attack.name': '--attack',
    'attack.attacker': '--attacker',
    'attack.scale': '--attack_scale',
}
_FIELDS = (
    'rounds', 'clients_per_round', 'min_clients', 'dropouts', 'local_epochs', 'batch_size',
    'eval_every', 'seed', 'max_concurrent_computation_calls',
    'algorithm.name', 'algorithm.client_lr', 'algorithm.server_lr', 'algorithm.fedprox_mu',
    'algorithm.client_weighting',
    'privacy.level', 'privacy.noise_multiplier', 'privacy.l2_norm_clip',
    'privacy.target_epsilon', 'privacy.target_delta', 'privacy.max_epsilon',
    'privacy.accountant', 'privacy.clipping', 'privacy.schedule', 'privacy.every',
    'secure_agg.mode', 'secure_agg.bits', 'secure_agg.clip', 'secure_agg.threshold',
    'secure_agg.colluders', 'personalize.method', 'personalize.epochs', 'personalize.lr',
    'robust.name', 'robust.norm', 'robust.trim', 'attack.name', 'attack.attacker', 'attack.scale',
) + tuple(f'data.{f.name}' for f in dataclasses.fields(data_lib.DataConfig))
FIELD_FLAGS = {field: _RENAMED.get(field, '--' + field.rpartition('.')[2])
               for field in _FIELDS}


def flag_message(message: str, overrides: Mapping[str, str] | None = None) -> str:
  """`message` with every config field it names replaced by its flag.

  Fields are matched as whole tokens, the longest first, so `--rounds` and
  `privacy.target_delta_x` stay as they are. A field of one plain word (`rounds`,
  `seed`, `dropouts`) is a field only where written `FIELD=value`; elsewhere it is
  English. `overrides` maps fields that a binary sets from flags of its own
  (e.g. `privacy.target_epsilon` from `--epsilons`).
  """
  table = {**FIELD_FLAGS, **(overrides or {})}
  names = '|'.join(re.escape(f) for f in sorted(table, key=len, reverse=True))
  pattern = re.compile(rf'(?<![\w./-])({names})(?![\w/-]|\.\w)')

  def replace(match: re.Match) -> str:
    field = match.group(1)
    if re.fullmatch(r'[a-z]+', field) and not match.string.startswith('=', match.end()):
      return field
    return table[field]

  return pattern.sub(replace, message)


class _FlagNames(std_logging.Filter):
  """Rewrites the config fields in the library's log records (e.g. the CSV loader's
  notes) into flags, as `flag_message` does for errors."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    record.msg, record.args = flag_message(record.getMessage()), ()
    return True


# A filter on a logger applies to that logger's own records only: the loggers that
# write notes are listed.
std_logging.getLogger(data_lib.csv_tables.__name__).addFilter(_FlagNames())


def exit_with_error(error: Exception, overrides: Mapping[str, str] | None = None):
  """Exits with `error: MESSAGE`, config fields named by their flags."""
  sys.exit(f'error: {flag_message(str(error), overrides)}')


# `training.run`'s folder options, as run_state's errors name them, and their flags.
_FOLDER_FLAGS = {'resume=True': '--resume', 'overwrite=True': '--overwrite',
                 'resume=False': '--noresume', 'another output_dir': 'another --output_dir'}


def exit_with_folder_error(error: 'run_state.FolderError'):
  """Exits with `error: MESSAGE`, run_state's folder options named by their flags."""
  message = str(error)
  for option, flag in _FOLDER_FLAGS.items():
    message = message.replace(option, flag)
  exit_with_error(ValueError(message))


def run_grid(settings: Mapping[str, grid.Setting], inputs: Mapping[int, 'RunInputs'],
             output_dir: str, planned: Mapping | None = None) -> dict[str, list[dict]]:
  """`grid.run_grid` with --resume and --overwrite; exits saying how to continue
  when a run is interrupted."""
  try:
    return grid.run_grid(settings, inputs, output_dir, planned=planned,
                         resume=FLAGS.resume, overwrite=FLAGS.overwrite)
  except run_state.FolderError as e:
    exit_with_folder_error(e)
  except grid.Interrupted as e:
    sys.exit(f'interrupted: {e}; run the same command again to continue '
             '(--overwrite starts again)')
