"""Helpers shared by the dataset loaders: locating files, parsing numbers,
train/test splitting and feature scaling.

Scalings (DataConfig.scaling):
  zscore:        each column minus a training mean, divided by a training std.
                 Data-dependent: removing one record moves every other
                 record's features, which a DP guarantee does not cover.
  public_ranges: each numeric column clipped to a declared [low, high] and
                 mapped affinely to [-1, 1]; a record's features depend on that
                 record and the declared ranges only. Values outside a range
                 are clipped silently (an error or count would depend on the
                 records). Binary and one-hot columns are left unchanged.
"""

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn import model_selection

from tff_med.data.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # (x [N, *feature_shape], y [N])
Range = tuple[float, float]  # (low, high) in a column's own units, low < high

SCALINGS = ('zscore', 'public_ranges')


def resolve_dir(data_dir: str, subfolder: str) -> str:
  """`data_dir/subfolder` when that folder exists, else `data_dir` itself."""
  nested = os.path.join(data_dir, subfolder)
  return nested if os.path.isdir(nested) else data_dir


def location(hospital: str, path: str, line: int | str | None = None,
             column: str | None = None) -> str:
  """'hospital 'h', file PATH, line L, column C' for error messages."""
  text = f'hospital {hospital!r}, file {path}'
  if line is not None:
    text += f', line {line}'
  if column is not None:
    text += f', column {column}'
  return text


def parse_finite(text: str, where: str) -> float:
  """`text` as a finite float; DataError prefixed by `where` otherwise."""
  try:
    value = float(text)
  except ValueError:
    raise DataError(f'{where}: value {text.strip()!r} is not a number') from None
  if not math.isfinite(value):
    raise DataError(f'{where}: value {text.strip()!r} is NaN or infinite')
  return value


def split_train_test(what: str, x: np.ndarray, y: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[Arrays, Arrays]:
  """Stratified train/test split of `x` [N, ...], `y` [N] (sklearn, `random_state=seed`).

  Falls back to a plain random split when stratifying is impossible (a class
  with a single record, as in the Switzerland heart-disease file).

  Raises:
    DataError: naming `what` (e.g. "hospital 'va'") when even a plain split
      leaves an empty part or `test_fraction` is not in (0, 1).
  """
  if not 0 < test_fraction < 1:
    raise DataError(f'test fraction {test_fraction} must be between 0 and 1')
  indices = np.arange(len(y))
  try:
    train, test = model_selection.train_test_split(
        indices, test_size=test_fraction, stratify=y, random_state=seed)
  except ValueError:
    try:
      train, test = model_selection.train_test_split(
          indices, test_size=test_fraction, random_state=seed)
    except ValueError as e:
      raise DataError(f'{what}: cannot split {len(y)} records into train and test '
                      f'with test fraction {test_fraction} ({e})') from None
  return (x[train], y[train]), (x[test], y[test])


FLAMBY_SEED = 43  # FLamby's Fed-Heart-Disease split: random_state=43 in every hospital.


def flamby_split(x: np.ndarray, y: np.ndarray) -> tuple[Arrays, Arrays]:
  """FLamby's Fed-Heart-Disease train/test split of one hospital, exactly:
  `train_test_split(np.arange(n), train_size=0.66, test_size=0.34,
  random_state=43, shuffle=True, stratify=y)` when each class has more than 2
  records, else the same unstratified."""
  _, counts = np.unique(y, return_counts=True)
  stratify = y if len(counts) > 1 and (counts > 2).all() else None
  train, test = model_selection.train_test_split(
      np.arange(len(y)), train_size=0.66, test_size=0.34, random_state=FLAMBY_SEED,
      shuffle=True, stratify=stratify)
  return (x[train], y[train]), (x[test], y[test])


def check_scaling(scaling: str) -> None:
  """DataError naming the field `data.scaling` unless it is one of SCALINGS."""
  if scaling not in SCALINGS:
    raise DataError(f'data.scaling={scaling!r}: unknown value; choose one of '
                    f'{", ".join(SCALINGS)}')


def fit_transform(x_train: np.ndarray, scaling: str, ranges: Mapping[int, Range],
                  zscore_columns: Sequence[int] | None = None) -> np.ndarray:
  """The per-column transform [F, 4] (low, high, offset, scale) of features `x_train` [N, F].

  A column maps to (clip(value, low, high) - offset) / scale (`apply_transform`).
  'zscore': `zscore_columns` (all when None) get (-inf, inf, training mean,
  training std), a zero std counting as 1 (only centred); 'public_ranges': the
  columns in `ranges` (index -> (low, high)) get (low, high, midpoint, half
  width), mapping [low, high] to [-1, 1]. Other columns: (-inf, inf, 0, 1).
  """
  check_scaling(scaling)
  transform = np.tile([-np.inf, np.inf, 0.0, 1.0], (x_train.shape[1], 1))
  if scaling == 'zscore':
    cols = list(range(x_train.shape[1]) if zscore_columns is None else zscore_columns)
    std = x_train[:, cols].std(axis=0)
    transform[cols, 2] = x_train[:, cols].mean(axis=0)
    transform[cols, 3] = np.where(std > 0, std, 1.0)
  else:
    for column, (low, high) in ranges.items():
      transform[column] = (low, high, (low + high) / 2, (high - low) / 2)
  return transform


def apply_transform(x: np.ndarray, transform: np.ndarray) -> np.ndarray:
  """`x` [N, F] mapped column-wise by `transform` [F, 4] (see `fit_transform`); float64."""
  low, high, offset, scale = transform.T
  return (np.clip(x.astype(np.float64), low, high) - offset) / scale


def scale_hospitals(train: Mapping[str, Arrays], test: Mapping[str, Arrays], scaling: str,
                    ranges: Mapping[int, Range], zscore_columns: Sequence[int] | None = None
                    ) -> tuple[dict[str, Arrays], dict[str, Arrays], dict[str, np.ndarray]]:
  """Each hospital's (train, test) scaled by `scaling` (one of SCALINGS), with the
  transform fitted on its own training features (`fit_transform`).

  Returns (train, test, hospital -> transform [F, 4]).
  """
  transforms = {h: fit_transform(x, scaling, ranges, zscore_columns)
                for h, (x, _) in train.items()}
  scaled = tuple({h: (apply_transform(x, transforms[h]), y) for h, (x, y) in split.items()}
                 for split in (train, test))
  return (*scaled, transforms)


def preprocessing(scaling: str, data_dependent: bool, source: str) -> dict[str, str | bool]:
  """The `FederatedData.preprocessing` record: {'scaling', 'data_dependent', 'source'}."""
  return {'scaling': scaling, 'data_dependent': data_dependent, 'source': source}
