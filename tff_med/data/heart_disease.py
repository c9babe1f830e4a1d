"""UCI Heart Disease: the four original hospitals, FLamby Fed-Heart-Disease preprocessing.

Files `processed.{cleveland,hungarian,switzerland,va}.data`: 14 comma-separated
columns, no header, '?' = missing. Preprocessing (as FLamby):
  - drop columns slope, ca, thal;
  - drop rows with a missing value '?' in the other columns (303/261/46/130
    rows remain) - the only rows ever dropped;
  - per hospital a 66/34 train/test split stratified on the label
    (`random_state=seed`; Switzerland has a single healthy patient, so it gets
    a plain random split: 199/104, 172/89, 30/16, 85/45 records);
  - one-hot cp (levels 1..4) and restecg (0..2) dropping the first level, with
    fixed levels so every hospital has the same 13 features;
  - scaling 'zscore' (FLamby's): every feature z-scored per hospital with its
    own training mean/std (data-dependent); 'public_ranges': age, trestbps,
    chol, thalach, oldpeak clipped to PUBLIC_RANGES and mapped to [-1, 1],
    the 0/1 columns (sex, fbs, exang, one-hot cp/restecg) unchanged;
  - label: num > 0 (heart disease).
"""

import os
from collections.abc import Sequence

import numpy as np

from tff_med.data import preprocess
from tff_med.data import schema
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData

HOSPITALS = ('cleveland', 'hungarian', 'switzerland', 'va')
COLUMNS = ('age', 'sex', 'cp', 'trestbps', 'chol', 'fbs', 'restecg', 'thalach', 'exang',
           'oldpeak', 'slope', 'ca', 'thal', 'num')
DROPPED = ('slope', 'ca', 'thal')
ONE_HOT_LEVELS = {'cp': (1, 2, 3, 4), 'restecg': (0, 1, 2)}  # first level dropped
NUMERIC = tuple(c for c in COLUMNS[:-1] if c not in DROPPED and c not in ONE_HOT_LEVELS)
FEATURE_NAMES = NUMERIC + tuple(f'{c}_{level}' for c, levels in ONE_HOT_LEVELS.items()
                                for level in levels[1:])
LABELS = (0, 1, 2, 3, 4)
TEST_FRACTION = 0.34
# Declared by us from clinical domain knowledge as plausibility limits (round
# numbers), not computed from the files: column -> (low, high) in its units.
# The files code an unmeasured trestbps or chol as 0 (all of Switzerland's
# chol); clipping maps that code to -1, which no measured value (chol >= 85,
# trestbps >= 92 mm Hg in the files) reaches.
PUBLIC_RANGES = {
    'age': (18, 100),  # years, adult patients
    'trestbps': (50, 250),  # resting systolic blood pressure, mm Hg
    'chol': (50, 700),  # serum cholesterol, mg/dl
    'thalach': (40, 220),  # maximum heart rate achieved, beats/min
    'oldpeak': (-5, 10),  # exercise-induced ST depression, mm (negative = elevation)
}


SPLITS = ('seeded', 'flamby')


def load(data_dir: str, seed: int = 0, scaling: str = 'zscore',
         hospitals: Sequence[str] = HOSPITALS, split: str = 'seeded') -> FederatedData:
  """Loads the four hospitals (or `hospitals` of them: a hospital's node reads its
  own file only) from `data_dir` (holding heart_disease/, or that folder).
  `split`: 'seeded' (stratified 66/34, `random_state=seed`) or 'flamby'
  (FLamby's own split, `preprocess.flamby_split`, whatever `seed`).

  Returns FederatedData with 13 float32 features per record, label num > 0,
  scaled by `scaling` (one of preprocess.SCALINGS; see the module docstring).

  Raises:
    DataError: naming hospital, file, 1-based line and column for a missing
      file, a row without 14 values, a non-numeric value other than '?', a
      NaN/inf value, num outside 0..4, cp/restecg outside their levels, or a
      file with no rows (or none without a missing value).
  """
  if split not in SPLITS:
    raise DataError(f'data.split={split!r}: choose one of {", ".join(SPLITS)}')
  folder = preprocess.resolve_dir(data_dir, 'heart_disease')
  train, test = {}, {}
  for hospital in hospitals:
    if hospital not in HOSPITALS:
      raise DataError(f'hospital {hospital!r}: UCI Heart Disease has {", ".join(HOSPITALS)}')
    x, y = read_hospital(hospital, os.path.join(folder, f'processed.{hospital}.data'))
    train[hospital], test[hospital] = (
        preprocess.flamby_split(x, y) if split == 'flamby' else
        preprocess.split_train_test(f'hospital {hospital!r}', x, y, TEST_FRACTION, seed))
  train, test, transforms = preprocess.scale_hospitals(
      train, test, scaling, {FEATURE_NAMES.index(c): r for c, r in PUBLIC_RANGES.items()})
  source = ("each hospital's own training mean/std, all 13 features" if scaling == 'zscore'
            else 'clinical plausibility ranges declared in heart_disease.PUBLIC_RANGES for '
                 f'{", ".join(PUBLIC_RANGES)}; 0/1 and one-hot columns unchanged')
  features = [schema.Feature(c, c) for c in NUMERIC] + [
      schema.Feature(f'{c}_{level}', c, float(level))
      for c, levels in ONE_HOT_LEVELS.items() for level in levels[1:]]
  return FederatedData.from_arrays(
      'heart_disease', train, test, feature_names=FEATURE_NAMES,
      description=(f'UCI Heart Disease, {_which(hospitals)}, FLamby preprocessing '
                   + ("(FLamby's own 66/34 split, random_state 43)" if split == 'flamby' else
                      f'(stratified 66/34 split, seed {seed})')),
      preprocessing=preprocess.preprocessing(scaling, scaling == 'zscore', source),
      schemas=schema.table_schemas(
          features, transforms, source, data_dependent=scaling == 'zscore',
          per_hospital=scaling == 'zscore', label='num', positive_label='num > 0',
          levels={c: tuple(float(v) for v in levels) for c, levels in ONE_HOT_LEVELS.items()}))


def _which(hospitals: Sequence[str]) -> str:
  return ('4 real hospitals' if tuple(hospitals) == HOSPITALS else
          f'hospital{"s" if len(hospitals) > 1 else ""} {", ".join(hospitals)}')


def read_hospital(hospital: str, path: str) -> tuple[np.ndarray, np.ndarray]:
  """One hospital's file -> (x float64 [N, 13] before scaling, y int64 [N] = num > 0)."""
  if not os.path.isfile(path):
    raise DataError(f'{preprocess.location(hospital, path)}: file not found')
  rows = []
  num_lines = 0
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      num_lines += 1
      row = _parse_row(hospital, path, line_number, line.strip().split(','))
      if row is not None:
        rows.append(row)
  if not rows:
    reason = 'no rows' if not num_lines else "no rows left after dropping rows with a '?'"
    raise DataError(f'{preprocess.location(hospital, path)}: {reason}')
  x = np.array([[row[c] for c in NUMERIC]
                + [float(row[c] == level) for c, levels in ONE_HOT_LEVELS.items()
                   for level in levels[1:]] for row in rows])
  y = np.array([int(row['num'] > 0) for row in rows], dtype=np.int64)
  return x, y


def _parse_row(hospital: str, path: str, line_number: int,
               fields: list[str]) -> dict[str, float | None] | None:
  """Column -> value, or None when a kept column is missing ('?')."""
  if len(fields) != len(COLUMNS):
    raise DataError(f'{preprocess.location(hospital, path, line_number)}: {len(fields)} '
                    f'comma-separated values, expected {len(COLUMNS)} '
                    f'({",".join(COLUMNS)})')
  row = {}
  for index, (column, text) in enumerate(zip(COLUMNS, fields), start=1):
    where = preprocess.location(hospital, path, line_number, f'{index} ({column})')
    if text.strip() == '?':
      row[column] = None
      continue
    value = row[column] = preprocess.parse_finite(text, where)
    allowed = LABELS if column == 'num' else ONE_HOT_LEVELS.get(column)
    if allowed is not None and value not in allowed:
      raise DataError(f'{where}: value {text.strip()!r} is not one of '
                      f'{", ".join(map(str, allowed))}')
  if any(row[c] is None for c in COLUMNS if c not in DROPPED):
    return None
  return row
