"""Hospital data sets: `DataConfig` says which, `load` builds its `FederatedData`.

  heart_disease:  UCI Heart Disease, 4 real hospitals (FLamby preprocessing).
  breast_cancer:  Wisconsin breast cancer (bundled with sklearn), simulated hospitals.
  breastmnist, pneumoniamnist: MedMNIST images, simulated hospitals.
  csv:            a user's own tables, one CSV file per hospital.
"""

import dataclasses
import os

from tff_med.data import breast_cancer, csv_tables, heart_disease, medmnist, preprocess
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData

DATASETS = ('heart_disease', 'breast_cancer', 'breastmnist', 'pneumoniamnist', 'csv')
DATA_DIR_ENV = 'TFF_MED_DATA_DIR'

__all__ = ['DATASETS', 'DataConfig', 'DataError', 'FederatedData', 'load']


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data set to load and how to form its hospitals.

  Attributes:
    dataset: one of DATASETS.
    data_dir: folder with heart_disease/ and medmnist/ (heart_disease and the
      MedMNIST sets only); None = environment variable TFF_MED_DATA_DIR.
    num_hospitals, partition, dirichlet_alpha, profile_features: simulated
      hospitals (breast_cancer, MedMNIST; see `partition.simulate_hospitals`).
      dirichlet_alpha applies to partition 'dirichlet' only; profile_features
      to breast_cancer with partition 'profiles' only; () = its default.
    csv_files, label_column, categorical_columns, feature_columns, drop_columns,
      id_columns, positive_label, missing, csv_encoding: the 'csv' data set
      (see `csv_tables`); CSV_FIELDS, an error for any other data set.
    test_fraction: held-out share for breast_cancer and csv (heart_disease
      keeps FLamby's 0.34; MedMNIST uses its official test set).
    seed: seeds splits and partitions.
    scaling: tables' feature scaling, one of preprocess.SCALINGS: 'zscore'
      (training mean/std; data-dependent, outside a DP guarantee) or
      'public_ranges' (declared ranges: heart_disease.PUBLIC_RANGES,
      breast_cancer.PUBLISHED_RANGES, feature_ranges for csv). MedMNIST
      ignores it (pixel / 255). FederatedData.preprocessing reports the result.
    feature_ranges: csv with scaling 'public_ranges': one (column, low, high)
      per numeric column, in the column's units.
    split: heart_disease's train/test split: 'seeded' (stratified 66/34 with
      `seed`) or 'flamby' (FLamby's own split, random_state 43, so results sit
      next to FLamby's published ones on the same patients).

  A field the data set would not read (CSV_FIELDS, `unread_fields`) must keep
  its default: `load` refuses it rather than ignore it.
  """
  dataset: str
  data_dir: str | None = None
  num_hospitals: int = 3
  partition: str = 'profiles'
  dirichlet_alpha: float = 0.5
  profile_features: tuple[str, ...] = ()
  csv_files: tuple[str, ...] = ()
  label_column: str = 'label'
  categorical_columns: tuple[str, ...] = ()
  test_fraction: float = 0.34
  seed: int = 0
  scaling: str = 'zscore'
  feature_ranges: tuple[tuple[str, float, float], ...] = ()
  feature_columns: tuple[str, ...] = ()
  drop_columns: tuple[str, ...] = ()
  id_columns: tuple[str, ...] = ()
  positive_label: str | None = None
  missing: str = 'error'
  csv_encoding: str = 'utf-8'
  split: str = 'seeded'

  def resolved_data_dir(self) -> str:
    """`data_dir`, else $TFF_MED_DATA_DIR; DataError when neither is set."""
    data_dir = self.data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
      raise DataError(f'data.data_dir=None: data set {self.dataset!r} needs its data '
                      f'folder; give it or set the environment variable {DATA_DIR_ENV}')
    return data_dir


# Fields read by the csv data set only; set for another data set, they are an error.
CSV_FIELDS = ('feature_ranges', 'csv_files', 'label_column', 'categorical_columns',
              'feature_columns', 'drop_columns', 'id_columns', 'positive_label', 'missing',
              'csv_encoding')
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
# Data sets whose hospitals are simulated from one pool.
SIMULATED = ('breast_cancer',) + medmnist.NAMES


def unread_fields(config: DataConfig) -> dict[str, str]:
  """{field: why `config`'s data set ignores it} for the simulation and split
  fields (num_hospitals, partition, dirichlet_alpha, profile_features,
  test_fraction) that `load` would not read; the CSV_FIELDS are checked apart."""
  unread = {}
  dataset = f'not data.dataset={config.dataset}'
  if config.dataset not in SIMULATED:
    given = 'one hospital per CSV file' if config.dataset == 'csv' else 'its own hospitals'
    for field in ('num_hospitals', 'partition', 'dirichlet_alpha', 'profile_features'):
      unread[field] = (f'applies to simulated hospitals ({", ".join(SIMULATED)}), {dataset} '
                       f'({given})')
  else:
    if config.partition != 'dirichlet':
      unread['dirichlet_alpha'] = (f'applies to data.partition=dirichlet only, not '
                                   f'data.partition={config.partition}')
    if config.dataset != 'breast_cancer':
      unread['profile_features'] = (f'applies to data.dataset=breast_cancer only, {dataset} '
                                    '(images are shifted in brightness)')
    elif config.partition != 'profiles':
      unread['profile_features'] = (f'applies to data.partition=profiles only, not '
                                    f'data.partition={config.partition}')
  if config.dataset == 'heart_disease':
    unread['test_fraction'] = (f'applies to breast_cancer and csv, {dataset} (FLamby\'s '
                               'fixed 0.34)')
  elif config.dataset in medmnist.NAMES:
    unread['test_fraction'] = (f'applies to breast_cancer and csv, {dataset} (MedMNIST\'s '
                               'official test set)')
  if config.dataset != 'heart_disease':
    unread['split'] = f'applies to heart_disease only, {dataset}'
  return unread


def _field_text(value) -> str:
  """A field's value as its flag would be written (`a,b` for a tuple)."""
  return ','.join(map(str, value)) if isinstance(value, tuple) else str(value)


def load(config: DataConfig) -> FederatedData:
  """Builds the hospitals' data described by `config`."""
  preprocess.check_scaling(config.scaling)
  if config.dataset != 'csv':
    for field in CSV_FIELDS:
      if getattr(config, field) != _DEFAULTS[field]:
        raise DataError(f'data.{field}: applies to the csv data set only, not '
                        f'{config.dataset!r}')
  for field, reason in unread_fields(config).items():
    if getattr(config, field) != _DEFAULTS[field]:
      raise DataError(f'data.{field}={_field_text(getattr(config, field))} {reason}: it '
                      'would be ignored; leave it out')
  if config.dataset == 'heart_disease':
    return heart_disease.load(config.resolved_data_dir(), config.seed, config.scaling,
                              split=config.split)
  if config.dataset == 'breast_cancer':
    return breast_cancer.load(config.num_hospitals, config.partition, config.seed,
                              config.dirichlet_alpha, config.profile_features or None,
                              config.test_fraction, config.scaling)
  if config.dataset in medmnist.NAMES:
    return medmnist.load(config.resolved_data_dir(), config.dataset, config.num_hospitals,
                         config.partition, config.seed, config.dirichlet_alpha)
  if config.dataset == 'csv':
    return csv_tables.load(config.csv_files, config.label_column, config.categorical_columns,
                           config.test_fraction, config.seed, config.scaling,
                           config.feature_ranges, feature_columns=config.feature_columns,
                           drop_columns=config.drop_columns, id_columns=config.id_columns,
                           positive_label=config.positive_label, missing=config.missing,
                           encoding=config.csv_encoding)
  raise DataError(f'unknown data set {config.dataset!r}; choose one of {", ".join(DATASETS)}')
