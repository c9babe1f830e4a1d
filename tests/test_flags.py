"""experiments/flags.py: config fields named by their flags, and the flags' configs."""

import dataclasses

from absl import flags as absl_flags
import pytest

from experiments import flags
from tff_med import data as data_lib
from tff_med.config import TrainConfig


def _leaf_fields(cls, prefix=''):
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.default):
      yield from _leaf_fields(type(field.default), f'{prefix}{field.name}.')
    else:
      yield prefix + field.name


@pytest.mark.parametrize('message, expected', [
    ('rounds=0: must be at least 1', '--rounds=0: must be at least 1'),
    ('privacy.level=record needs a federated algorithm.name, not local',
     '--dp=record needs a federated --algorithm, not local'),
    ('dropouts=3: must be between 0 and 2', '--simulate_dropouts=3: must be between 0 and 2'),
    ('min_clients=4 with dropouts=1 of 4 hospitals per round: every round would be skipped',
     '--min_clients=4 with --simulate_dropouts=1 of 4 hospitals per round: every round would '
     'be skipped'),
    ('secure_agg.mode=tff sums unweighted updates: use algorithm.client_weighting=uniform',
     '--secure_agg=tff sums unweighted updates: use --client_weighting=uniform'),
    ('secure_agg.colluders=2: must be between 0 and secure_agg.threshold - 2 = 1',
     '--secagg_colluders=2: must be between 0 and --secagg_threshold - 2 = 1'),
    ('privacy.max_epsilon=1.0 is below privacy.target_epsilon=2.0',
     '--max_epsilon=1.0 is below --target_epsilon=2.0'),
    ('privacy.clipping, privacy.schedule and privacy.every; secure_agg.bits, secure_agg.clip',
     '--dp_clipping, --dp_schedule and --dp_every; --secagg_bits, --secagg_clip'),
    ('algorithm.client_lr=0 and algorithm.server_lr=-1; algorithm.fedprox_mu=x',
     '--client_lr=0 and --server_lr=-1; --fedprox_mu=x'),
    ('data.feature_ranges: used only with data.scaling=\'public_ranges\'',
     '--feature_ranges: used only with --scaling=\'public_ranges\''),
    ('max_concurrent_computation_calls=0, clients_per_round=9 (eval_every=0).',
     '--max_concurrent_computation_calls=0, --clients_per_round=9 (--eval_every=0).'),
])
def test_fields_become_flags(message, expected):
  assert flags.flag_message(message) == expected


@pytest.mark.parametrize('message', [
    # Flags, as the library wrote them before it named fields, stay as they are.
    '--rounds=0: must be at least 1; --dp=record with --secagg_threshold=2 and --seed=1',
    # One-word fields are English where not written FIELD=value.
    'the run would stop before its planned rounds; mask seed: must be 32 bytes; '
    'dropouts [1] are not among the hospitals',
    # Whole tokens only: no field inside a longer name, a path or a value.
    'xrounds=1 rounds_total=2 privacy.levels=3 my.privacy.level=4 runs/batch_size/seed0 '
    'secure_agg.mode_x=5 batch_size-dependent',
])
def test_other_text_is_left_alone(message):
  assert flags.flag_message(message) == message


def test_longest_field_first_and_overrides():
  # `privacy.target_epsilon` is not `privacy.target` + `_epsilon`; a binary's own
  # flag for a field wins over the table.
  assert flags.flag_message('privacy.target_epsilon=0.5: too small; rounds=3') == (
      '--target_epsilon=0.5: too small; --rounds=3')
  assert flags.flag_message('privacy.target_epsilon=0.5: too small',
                            {'privacy.target_epsilon': '--epsilons'}) == (
                                '--epsilons=0.5: too small')
  once = flags.flag_message('seed=1 privacy.level=client')
  assert flags.flag_message(once) == once == '--seed=1 --dp=client'


def test_every_config_field_has_a_defined_flag():
  fields = set(_leaf_fields(TrainConfig)) | {
      f'data.{f.name}' for f in dataclasses.fields(data_lib.DataConfig)}
  assert set(flags.FIELD_FLAGS) == fields
  for flag in flags.FIELD_FLAGS.values():
    assert flag[2:] in absl_flags.FLAGS, flag


def test_exit_with_error_names_flags():
  with pytest.raises(SystemExit) as exit_info:
    flags.exit_with_error(ValueError('privacy.l2_norm_clip=0: must be positive'))
  assert exit_info.value.code == 'error: --l2_norm_clip=0: must be positive'


def test_new_flags_reach_the_config():
  try:
    absl_flags.FLAGS(['prog', '--dataset=breast_cancer', '--simulate_dropouts=2',
                      '--min_clients=1', '--secure_agg=masking', '--secagg_bits=20'])
    config = flags.train_config(secure_agg='tff')
    assert (config.dropouts, config.min_clients) == (2, 1)
    assert (config.secure_agg.mode, config.secure_agg.bits) == ('tff', 20)
    assert flags.train_config(secagg_bits=12, seed=5).secure_agg.bits == 12
    assert absl_flags.FLAGS.resume and not absl_flags.FLAGS.overwrite
  finally:
    absl_flags.FLAGS.unparse_flags()
