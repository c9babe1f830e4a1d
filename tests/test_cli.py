"""The binaries never mislead: flags they would ignore are errors, a bad
--output_dir fails before any data is loaded, a folder is never shared by two
runs' outputs, --help lists the flags and their per-dataset defaults, the time
left leaves the first round's compilation out, and the README's way of reading
the TensorBoard scalars works on a real run."""

import csv
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sys

from absl import flags as absl_flags
import pytest
import tensorflow as tf

from experiments import flags
from tff_med import data as data_lib
from tff_med import run_state
from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.models import ModelConfig, build_keras_model
from tff_med.privacy.dp_account import PrivacyConfig
from tff_med.secure_agg.config import SecureAggConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ['--dataset=breast_cancer', '--rounds=2', '--eval_every=1']


def _binary(name, *args):
  return subprocess.run([sys.executable, '-m', f'experiments.{name}', *args],
                        capture_output=True, text=True, timeout=600, cwd=ROOT,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


_IGNORED = 'is set but --dp=none: it would be ignored'


@pytest.mark.parametrize('args,message', [
    # Privacy flags without --dp: every one, at any value (even its default).
    *[([flag], f'{flag} {_IGNORED}') for flag in (
        '--noise_multiplier=1.0', '--target_epsilon=2.0', '--target_delta=1e-05',
        '--l2_norm_clip=2.0', '--l2_norm_clip=1.0', '--max_epsilon=3.0', '--accountant=pld',
        '--accountant=rdp', '--dp_clipping=adaptive', '--dp_schedule=first_round',
        '--dp_every=2')],
    # Flags meaningful only with one level or mode.
    (['--dp=record', '--noise_multiplier=1', '--dp_every=3'],
     '--dp_every=3 applies to --dp_schedule=every_n'),
    (['--dp=record', '--noise_multiplier=1', '--dp_clipping=adaptive'],
     '--dp_clipping=adaptive applies to --dp=client'),
    (['--dp=client', '--noise_multiplier=1', '--dp_schedule=first_round'],
     '--dp_schedule=first_round applies to --dp=record'),
    (['--secure_agg=masking', '--client_weighting=uniform', '--secagg_colluders=1'],
     '--secagg_colluders=1 applies to --dp=client with --secure_agg=masking'),
    (['--dp=record', '--noise_multiplier=1', '--secure_agg=masking',
      '--client_weighting=uniform', '--secagg_colluders=0'],
     '--secagg_colluders=0 applies to --dp=client'),
    (['--secagg_bits=12'], '--secagg_bits=12 is set but --secure_agg=none'),
    (['--secagg_clip=0.5'], '--secagg_clip=0.5 is set but --secure_agg=none'),
    (['--secure_agg=tff', '--client_weighting=uniform', '--secagg_threshold=3'],
     '--secagg_threshold and --secagg_colluders apply to --secure_agg=masking'),
    (['--csv_files=a.csv'], '--csv_files: applies to the csv data set only'),
    (['--dp=record', '--target_epsilon=2', '--max_epsilon=1'],
     '--max_epsilon=1.0 is below --target_epsilon=2.0'),
    # Personalisation flags without --personalize=finetune, even at their default.
    (['--personalize_epochs=3'], '--personalize_epochs=3 is set but --personalize=none: it '
     'would be ignored'),
    (['--personalize_epochs=5'], '--personalize_epochs=5 is set but --personalize=none'),
    (['--personalize_lr=0.1'], '--personalize_lr=0.1 is set but --personalize=none'),
    # Algorithm flags the algorithm does not read, even at their default value.
    (['--fedprox_mu=0.1'], '--fedprox_mu=0.1 applies to --algorithm=fedprox only, not '
     '--algorithm=fedavg: it would be ignored'),
    (['--algorithm=fedadam', '--fedprox_mu=0.01'], '--fedprox_mu=0.01 applies to '
     '--algorithm=fedprox only, not --algorithm=fedadam'),
    (['--algorithm=local', '--server_lr=0.5'], '--server_lr=0.5 applies to the federated '
     'algorithms only, not --algorithm=local (a baseline has no server optimiser)'),
    (['--algorithm=pooled', '--server_lr=1.0'], '--server_lr=1.0 applies to the federated '
     'algorithms only, not --algorithm=pooled'),
    # Model flags the model does not read.
    (['--hidden_units=8'], '--hidden_units=8 applies to --model=mlp only, not --model=logreg'),
    (['--model=cnn', '--hidden_units=64,32'], '--hidden_units=64,32 applies to --model=mlp '
     'only, not --model=cnn'),
    (['--dropout=0.2'], '--dropout=0.2 applies to --model=mlp and --model=cnn only, not '
     '--model=logreg'),
    (['--dataset=heart_disease', '--dropout=0.0'], '--dropout=0.0 applies to --model=mlp and '
     '--model=cnn only, not --model=logreg'),
    # Data flags the data set does not read (checked before any file is read).
    *[(['--dataset=heart_disease', flag], f'{flag} applies to simulated hospitals '
       '(breast_cancer, breastmnist, pneumoniamnist), not --dataset=heart_disease')
      for flag in ('--num_hospitals=4', '--partition=profiles', '--dirichlet_alpha=0.5',
                   '--profile_features=age')],
    *[(['--dataset=csv', '--csv_files=a.csv', flag], f'{flag} applies to simulated '
       'hospitals (breast_cancer, breastmnist, pneumoniamnist), not --dataset=csv')
      for flag in ('--num_hospitals=3', '--partition=iid')],
    (['--dirichlet_alpha=0.1'], '--dirichlet_alpha=0.1 applies to --partition=dirichlet only, '
     'not --partition=profiles'),
    (['--dataset=pneumoniamnist', '--partition=iid', '--dirichlet_alpha=0.5'],
     '--dirichlet_alpha=0.5 applies to --partition=dirichlet only, not --partition=iid'),
    (['--partition=iid', '--profile_features=mean_radius'], '--profile_features=mean_radius '
     'applies to --partition=profiles only, not --partition=iid'),
    (['--dataset=breastmnist', '--profile_features=mean_radius'], '--profile_features='
     'mean_radius applies to --dataset=breast_cancer only, not --dataset=breastmnist'),
    (['--dataset=heart_disease', '--test_fraction=0.34'], '--test_fraction=0.34 applies to '
     'breast_cancer and csv, not --dataset=heart_disease (FLamby\'s fixed 0.34)'),
    (['--dataset=pneumoniamnist', '--test_fraction=0.2'], '--test_fraction=0.2 applies to '
     'breast_cancer and csv, not --dataset=pneumoniamnist (MedMNIST\'s official test set)'),
])
def test_flags_a_run_would_ignore_are_errors(args, message):
  """What experiments.train checks before training, in process (fast)."""
  try:
    absl_flags.FLAGS(['prog', '--dataset=breast_cancer', *args])
    with pytest.raises(ValueError) as error:
      inputs = flags.load_run_inputs()
      training.build_plan(inputs.data, inputs.keras_model_fn, flags.train_config(),
                          log=lambda line: None)
    assert message in flags.flag_message(str(error.value))
  finally:
    absl_flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('binary,args,message', [
    ('train', ['--noise_multiplier=1'], f'--noise_multiplier=1.0 {_IGNORED}'),
    ('train', ['--dp=record', '--noise_multiplier=1', '--dp_every=3'],
     '--dp_every=3 applies to --dp_schedule=every_n'),
    ('compare', ['--max_epsilon=3', '--seeds=1'], f'--max_epsilon=3.0 {_IGNORED}'),
    # Flags a grid binary replaces by its own lists.
    ('compare', ['--algorithm=fedadam'], '--algorithm is not used by this binary'),
    ('privacy_sweep', ['--dp=record', '--target_epsilon=1'],
     '--target_epsilon is not used by this binary'),
    ('privacy_report', ['--secure_agg=masking'], '--secure_agg is not used by this binary'),
    ('secure_agg_cost', ['--secagg_bits=8'], '--secagg_bits is not used by this binary'),
    # --fedprox_mu and --server_lr that no run of the grid reads.
    ('compare', ['--algorithms=fedavg,local', '--fedprox_mu=0.1', '--seeds=1'],
     '--fedprox_mu=0.1 applies to --algorithm=fedprox only, not --algorithms=fedavg,local'),
    ('compare', ['--algorithms=local,pooled', '--server_lr=0.5', '--seeds=1'],
     '--server_lr=0.5 applies to the federated algorithms only, not '
     '--algorithms=local,pooled'),
    ('privacy_sweep', ['--dp=record', '--fedprox_mu=0.1', '--seeds=1'],
     '--fedprox_mu=0.1 applies to --algorithm=fedprox only, not --algorithm=fedavg'),
    ('train', ['--dataset=heart_disease', '--num_hospitals=4'],
     '--num_hospitals=4 applies to simulated hospitals'),
    # An output folder that is a file, or under one: before any data is loaded
    # (the missing data folder would fail later).
    *[(binary, ['--dataset=heart_disease', '--data_dir=/nonexistent', '--output_dir={file}'],
       '--output_dir={file}: is a file, not a folder')
      for binary in ('train', 'compare', 'privacy_sweep', 'privacy_report', 'secure_agg_cost')],
    ('train', ['--dataset=heart_disease', '--data_dir=/nonexistent',
               '--output_dir={file}/run'], '--output_dir={file}/run: cannot create it: {file} '
     'is a file'),
])
def test_binaries_exit_with_one_line(binary, args, message, tmp_path):
  file = tmp_path / 'a_file'
  file.write_text('not a folder')
  args = [a.format(file=file) for a in args]
  if not any(a.startswith('--output_dir') for a in args):
    args.append(f'--output_dir={tmp_path / "out"}')
  if binary == 'privacy_sweep' and not any(a.startswith('--dp=') for a in args):
    args.append('--dp=record')
  result = _binary(binary, '--dataset=breast_cancer', *args)
  assert result.returncode != 0
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
  assert message.format(file=file) in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / 'out' / 'summary.json')


@pytest.mark.parametrize('privacy', [
    PrivacyConfig(**{f.name: value}) for f, value in zip(
        dataclasses.fields(PrivacyConfig)[1:],
        (1.0, 0.5, 2.0, 1e-5, 3.0, 'pld', 'adaptive', 'first_round', 2))])
def test_library_refuses_privacy_fields_without_a_level(privacy):
  # Every field but `level` is covered.
  assert len(dataclasses.fields(PrivacyConfig)) == 10
  with pytest.raises(ValueError, match=r'privacy\.\w+=.* is set but privacy.level=none'):
    TrainConfig(privacy=privacy).validate(3)
  TrainConfig(privacy=dataclasses.replace(privacy, level='record')).validate(3)  # No raise.


@pytest.mark.parametrize('args,read', [
    (['--algorithm=fedprox', '--fedprox_mu=0.1'], {'fedprox_mu': 0.1}),
    (['--algorithm=fedadam', '--server_lr=0.2'], {'server_lr': 0.2}),
    (['--model=mlp', '--hidden_units=8', '--dropout=0.2'],
     {'hidden_units': (8,), 'dropout': 0.2}),
    (['--dataset=breastmnist', '--dropout=0.2'], {'dropout': 0.2}),
    (['--partition=dirichlet', '--dirichlet_alpha=0.3'], {'dirichlet_alpha': 0.3}),
    (['--dataset=pneumoniamnist', '--dirichlet_alpha=0.3'], {'dirichlet_alpha': 0.3}),
    (['--profile_features=mean_radius'], {'profile_features': ('mean_radius',)}),
    (['--dataset=breastmnist', '--num_hospitals=4', '--partition=iid'],
     {'num_hospitals': 4, 'partition': 'iid'}),
    (['--test_fraction=0.2'], {'test_fraction': 0.2}),
    (['--dataset=csv', '--csv_files=a.csv', '--test_fraction=0.2'], {'test_fraction': 0.2}),
])
def test_flags_a_run_reads_are_accepted(args, read):
  """The checks above refuse only what the run ignores."""
  try:
    absl_flags.FLAGS(['prog', '--dataset=breast_cancer', *args])
    data, model, config = flags.data_config(), flags.model_config(), flags.train_config()
    config.validate(3)
    got = {**dataclasses.asdict(data), **dataclasses.asdict(model),
           **dataclasses.asdict(config.algorithm)}
    assert {k: got[k] for k in read} == read
    assert not data_lib.unread_fields(data).keys() & read.keys()
  finally:
    absl_flags.FLAGS.unparse_flags()


def test_grid_runs_get_the_algorithm_flags_they_read():
  """compare trains fedprox and the baselines with one set of flags: --fedprox_mu
  reaches the FedProx runs only, --server_lr the federated runs only; given to no
  run that reads it, it is an error."""
  try:
    absl_flags.FLAGS(['prog', '--dataset=breast_cancer', '--fedprox_mu=0.1',
                      '--server_lr=0.5'])
    flags.check_algorithm_flags(['fedavg', 'fedprox', 'local', 'pooled'], '--algorithms')
    configs = {a: flags.train_config(a) for a in ('fedavg', 'fedprox', 'local', 'pooled')}
    for config in configs.values():
      config.validate(3)
    assert [c.algorithm.fedprox_mu for c in configs.values()] == [0.01, 0.1, 0.01, 0.01]
    assert [c.algorithm.server_lr for c in configs.values()] == [0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match='--fedprox_mu=0.1 applies to --algorithm=fedprox '
                       'only, not --algorithms=fedavg,local'):
      flags.check_algorithm_flags(['fedavg', 'local'], '--algorithms')
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(['prog', '--dataset=breast_cancer', '--server_lr=0.5'])
    with pytest.raises(ValueError, match='--server_lr=0.5 applies to the federated '
                       'algorithms only, not --algorithms=local,pooled'):
      flags.check_algorithm_flags(['local', 'pooled'], '--algorithms')
  finally:
    absl_flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('algorithm,message', [
    (AlgorithmConfig('fedavg', fedprox_mu=0.1),
     'algorithm.fedprox_mu=0.1 applies to algorithm.name=fedprox only, not '
     'algorithm.name=fedavg'),
    (AlgorithmConfig('local', server_lr=0.5),
     'algorithm.server_lr=0.5 applies to the federated algorithms only, not '
     'algorithm.name=local'),
    (AlgorithmConfig('pooled', fedprox_mu=0.0), 'algorithm.fedprox_mu=0.0 applies to '
     'algorithm.name=fedprox only'),
])
def test_library_refuses_algorithm_fields_the_algorithm_ignores(algorithm, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    TrainConfig(algorithm).validate(3)
  TrainConfig(dataclasses.replace(algorithm, name='fedprox')).validate(3)  # No raise.


@pytest.mark.parametrize('config,message', [
    (data_lib.DataConfig('heart_disease', num_hospitals=5), 'data.num_hospitals=5 applies '
     'to simulated hospitals'),
    (data_lib.DataConfig('csv', csv_files=('a.csv',), partition='iid'),
     'data.partition=iid applies to simulated hospitals'),
    (data_lib.DataConfig('breast_cancer', dirichlet_alpha=0.1),
     'data.dirichlet_alpha=0.1 applies to data.partition=dirichlet only'),
    (data_lib.DataConfig('breast_cancer', partition='iid', profile_features=('a', 'b')),
     'data.profile_features=a,b applies to data.partition=profiles only'),
    (data_lib.DataConfig('breastmnist', profile_features=('a',)),
     'data.profile_features=a applies to data.dataset=breast_cancer only'),
    (data_lib.DataConfig('heart_disease', test_fraction=0.2),
     'data.test_fraction=0.2 applies to breast_cancer and csv'),
    (data_lib.DataConfig('pneumoniamnist', test_fraction=0.2),
     'data.test_fraction=0.2 applies to breast_cancer and csv'),
])
def test_library_refuses_data_fields_the_data_set_ignores(config, message):
  # Before any file is read: none of these data folders or files exist.
  config = dataclasses.replace(config, data_dir='/nonexistent')
  with pytest.raises(data_lib.DataError, match=re.escape(message)):
    data_lib.load(config)


def test_library_refuses_model_fields_the_model_ignores():
  with pytest.raises(ValueError, match='--hidden_units=8 applies to --model=mlp only'):
    build_keras_model(ModelConfig('logreg', hidden_units=(8,)), (5,))
  with pytest.raises(ValueError, match='--dropout=0.1 applies to --model=mlp and '
                     '--model=cnn only, not --model=logreg'):
    build_keras_model(ModelConfig('logreg', dropout=0.1), (5,))
  with pytest.raises(ValueError, match='--hidden_units=8,4 applies to --model=mlp only, not '
                     '--model=cnn'):
    build_keras_model(ModelConfig('cnn', hidden_units=(8, 4)), (28, 28, 1))
  # The defaults as summary.json records them (a list) reload.
  build_keras_model(ModelConfig('logreg', hidden_units=[64, 32]), (5,))
  build_keras_model(ModelConfig('cnn', dropout=0.2), (28, 28, 1))


def test_library_refuses_colluders_without_hospital_level_masking():
  with pytest.raises(ValueError, match='secure_agg.colluders=1 applies to privacy.level=client'):
    TrainConfig(secure_agg=SecureAggConfig('masking', colluders=1)).validate(3)
  TrainConfig(privacy=PrivacyConfig('client', noise_multiplier=1.0),
              secure_agg=SecureAggConfig('masking', colluders=1)).validate(3)


@pytest.mark.parametrize('binary,expected', [
    ('train', ['--dataset', '--algorithm', '--rounds', '--dp', '--noise_multiplier',
               '--target_epsilon', '--secure_agg', '--output_dir', '--audit', '--resume']),
    ('privacy_sweep', ['--dataset', '--algorithm', '--dp', '--epsilons', '--output_dir']),
    ('audit', ['--run_dir', '--data_dir', '--target_delta']),
])
def test_help_lists_the_main_flags(binary, expected):
  result = _binary(binary, '--help')  # absl exits 1 after the help.
  listed = set(re.findall(r'^  --(?:\[no\])?(\w+)', result.stdout, re.M))
  assert {e[2:] for e in expected} <= listed, result.stdout
  assert 'verbosity' not in listed  # absl's own flags stay in --helpfull.
  if binary == 'train':  # A dataset-dependent default, per dataset.
    assert 'Default: heart_disease 50 (with --dp: 20), breast_cancer 10' in ' '.join(
        result.stdout.split())


@pytest.mark.parametrize('binary', ['train', 'predict', 'privacy_sweep', 'secure_agg_cost'])
def test_help_prints_the_example_command_as_written(binary):
  """The docstring's example keeps its line continuation (a backslash-newline in a
  plain docstring joins the lines with a run of spaces)."""
  result = _binary(binary, '--help')
  usage = result.stdout.split('\nflags:')[0]
  assert f'python -m experiments.{binary}' in usage, result.stdout
  assert re.search(rf'python -m experiments\.{binary} .* \\\n +--', usage), usage
  assert not re.search(r'\S {3,}--', usage), usage


def _help_defaults(name):
  """{key: value} of the 'Default: KEY VALUE (with --dp: V), ...' in the flag's help."""
  text = absl_flags.FLAGS[name].help.split('Default: ')[1].rstrip('.')
  return {m[0]: (m[1], m[2] or None) for m in re.findall(
      r'(\w+) ([^ ,]+?)(?: \(with --dp: ([^)]+)\))?(?:, |$)', text)}


@pytest.mark.parametrize('name', ['model', 'rounds', 'local_epochs', 'batch_size',
                                  'client_lr', 'eval_every', 'client_weighting',
                                  'num_hospitals', 'partition', 'l2_norm_clip'])
def test_helpfull_shows_the_default_of_each_dataset(name):
  shown = _help_defaults(name)
  datasets = (flags._SIMULATED if name in ('num_hospitals', 'partition')
              else tuple(flags.DATASET_DEFAULTS))
  assert set(shown) == set(datasets)
  try:
    for dataset in datasets:
      absl_flags.FLAGS(['prog', f'--dataset={dataset}'])
      plain = flags._flag_or_default(name)
      absl_flags.FLAGS(['prog', f'--dataset={dataset}', '--dp=record'])
      private = flags._flag_or_default(name)
      value, with_dp = shown[dataset]
      if name == 'l2_norm_clip':  # Applies only with --dp.
        assert (value, with_dp) == (str(private), None)
      else:
        assert value == str(plain) and with_dp == (None if private == plain else str(private))
  finally:
    absl_flags.FLAGS.unparse_flags()


def test_helpfull_shows_the_server_lr_of_each_algorithm():
  shown = _help_defaults('server_lr')
  assert set(shown) == {'fedavg', 'fedprox', 'fedadam', 'fedyogi', 'fedadagrad'}
  try:
    absl_flags.FLAGS(['prog'])
    for algorithm, (value, _) in shown.items():
      assert value == str(flags.train_config(algorithm).algorithm.server_lr)
  finally:
    absl_flags.FLAGS.unparse_flags()


def test_time_left_leaves_the_first_rounds_compilation_out():
  now = [0.0]
  lines = []
  progress = training._Progress(5, 1, lines.append, clock=lambda: now[0])
  left = []
  for round_num, end in ((1, 100.0), (2, 102.0), (3, 105.0), (4, 106.0), (5, 108.0)):
    now[0] = end
    line, _ = progress.lines(round_num, {}, '')
    left.append(re.search(r'left ~\s*(\S+)', line)[1])
  # After round 1 (100 s, mostly compilation) nothing is known; then the mean of
  # the rounds after it: 2 s, 2.5 s, 2 s per round.
  assert left == ['?', '6.0s', '5.0s', '2.0s', '0.0s']
  assert 'elapsed  108.0s' in line
  # A resumed session compiles again in its first round.
  now[0] = 0.0
  resumed = training._Progress(5, 4, lines.append, clock=lambda: now[0])
  now[0] = 50.0
  assert 'left ~     ?' in resumed.lines(4, {}, '')[0]


def _write_scalar(directory, value):
  writer = tf.summary.create_file_writer(directory)
  if value is not None:
    with writer.as_default():
      tf.summary.scalar('train/loss', value, step=1)
  writer.flush()


def test_folder_with_an_earlier_runs_outputs_but_no_state_is_refused(tmp_path):
  # A run cut before its first round leaves an empty event file and a CSV
  # header: it continues.
  _write_scalar(str(tmp_path / 'cut' / 'tensorboard'), None)
  (tmp_path / 'cut' / 'metrics.csv').write_text('round\n')
  run_state.RunState(str(tmp_path / 'cut'), {})
  for name in ('tensorboard/', 'metrics.csv', 'summary.json', 'saved_model', 'audit.json',
               'audit_local_north'):
    folder = tmp_path / name.replace('/', '').replace('.', '_')
    if name == 'tensorboard/':
      _write_scalar(str(folder / 'tensorboard'), 0.5)
    elif name == 'metrics.csv':
      folder.mkdir()
      (folder / name).write_text('round,train/loss\n1,0.5\n')
    elif name in ('saved_model', 'audit_local_north'):
      (folder / name).mkdir(parents=True)
    else:
      folder.mkdir()
      (folder / name).write_text('{}')
    with pytest.raises(run_state.FolderError, match=f'outputs of an earlier run .*{name}'):
      run_state.RunState(str(folder), {})
    run_state.RunState(str(folder), {}, overwrite=True)  # Deletes them.
    assert not os.path.exists(folder / name.rstrip('/'))


def test_overwrite_deletes_the_membership_audit_of_the_earlier_run(tmp_path):
  """experiments.audit writes audit.json and a local-only run into the folder: an
  old audit never sits beside a new run."""
  run_state.RunState(str(tmp_path), {})
  (tmp_path / 'audit.json').write_text('{}')
  (tmp_path / 'audit_local_north' / 'saved_model').mkdir(parents=True)
  (tmp_path / 'notes.txt').write_text('the user\'s own')
  run_state.RunState(str(tmp_path), {}, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ['notes.txt', 'program_state']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('cli') / 'run')
  result = _binary('train', *RUN, f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def test_readme_snippet_reads_the_tensorboard_scalars(finished_run):
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  snippet = re.search(r'<!-- tensorboard-snippet -->\n```python\n(.*?)```', readme, re.S)[1]
  assert "'runs/heart_fedadam/tensorboard'" in snippet
  namespace = {}
  exec(snippet.replace('runs/heart_fedadam', finished_run), namespace)  # pylint: disable=exec-used
  with open(os.path.join(finished_run, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  assert namespace['loss'] == [(int(r['round']), pytest.approx(float(r['train/loss'])))
                               for r in rows]
  assert 'eval/pooled/auc' in namespace['events'].Tags()['tensors']


def test_a_finished_folder_is_never_shared_by_two_runs(finished_run, tmp_path):
  # --noresume on a finished run: refused, one line, nothing written.
  result = _binary('train', *RUN, f'--output_dir={finished_run}', '--noresume')
  assert result.returncode != 0
  assert result.stderr.startswith('error: ') and (
      'holds the saved state of a run (program state version 2)') in (
      result.stderr) and '--overwrite' in result.stderr, result.stderr[-2000:]
  # Its outputs without the program state: refused, then --overwrite starts again
  # with a single event file.
  copy = str(tmp_path / 'copy')
  shutil.copytree(finished_run, copy)
  shutil.rmtree(os.path.join(copy, 'program_state'))
  os.remove(os.path.join(copy, 'audit_log.jsonl'))
  result = _binary('train', *RUN, f'--output_dir={copy}')
  assert result.returncode != 0
  assert result.stderr.startswith('error: ') and 'outputs of an earlier run' in result.stderr
  assert 'tensorboard/' in result.stderr and '--overwrite' in result.stderr
  assert len(glob.glob(os.path.join(copy, 'tensorboard', '*tfevents*'))) == 1
  result = _binary('train', *RUN, f'--output_dir={copy}', '--overwrite')
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(glob.glob(os.path.join(copy, 'tensorboard', '*tfevents*'))) == 1
