"""A user's own tabular data: one CSV file per hospital (hospital name = file stem).

Each file has a header row and the same columns (any order): a 0/1 label
column, optional categorical columns and numeric columns (all others). Every
file is validated completely before anything is built. Then, per hospital: a
stratified train/test split (plain random split when a class has a single
record), numeric columns scaled (scaling 'zscore': with the hospital's own
training mean/std; 'public_ranges': clipped to the user's declared
feature_ranges and mapped to [-1, 1]), categorical columns one-hot encoded
over the union of levels seen at any hospital (sorted), features ordered
numeric then one-hot ('column=level'). That level set is read from the
records, so tables with categorical columns stay data-dependent under either
scaling.
"""

import csv
import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from tff_med.data import preprocess
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData


@dataclasses.dataclass
class _Table:
  """One file as read: header and (line number, fields) per data row."""
  hospital: str
  path: str
  header: list[str]
  rows: list[tuple[int, list[str]]]


def load(csv_files: Sequence[str], label_column: str,
         categorical_columns: Sequence[str] = (), test_fraction: float = 0.34,
         seed: int = 0, scaling: str = 'zscore',
         feature_ranges: Sequence[tuple[str, float, float]] = ()) -> FederatedData:
  """Loads one hospital per CSV file.

  `scaling`: one of preprocess.SCALINGS; 'public_ranges' needs `feature_ranges`,
  one (column, low, high) for every numeric column.

  Raises:
    DataError: naming hospital, file, line (1-based, header = line 1; with the
      1-based data row) and column for: a missing file, no header or no data
      rows, a row with the wrong number of fields, an empty cell, a
      non-numeric or NaN/inf value in a numeric column, a label not 0/1, a
      missing label or categorical column, columns that differ between
      hospitals, or two files with the same stem; naming the field
      feature_ranges for a numeric column without a range, a range for a
      column that is not numeric, low >= high, or ranges without
      scaling 'public_ranges'.
  """
  preprocess.check_scaling(scaling)
  if feature_ranges and scaling != 'public_ranges':
    raise DataError(f"data.feature_ranges: used only with data.scaling='public_ranges', "
                    f'not {scaling!r}')
  if not csv_files:
    raise DataError('data.csv_files=(): no CSV files given; pass one file per hospital')
  tables = {}
  for path in csv_files:
    hospital = os.path.splitext(os.path.basename(path))[0]
    if hospital in tables:
      raise DataError(f'files {tables[hospital].path} and {path} both give hospital name '
                      f'{hospital!r} (the file stem); rename one')
    tables[hospital] = _read(hospital, path)
  numeric = _check_columns(list(tables.values()), label_column, categorical_columns)
  ranges = _column_ranges(feature_ranges, numeric) if scaling == 'public_ranges' else {}
  parsed = {h: _parse(t, label_column, numeric, categorical_columns) for h, t in tables.items()}

  levels = {c: sorted(set().union(*(p[2][c] for p in parsed.values())))
            for c in categorical_columns}
  train, test = {}, {}
  for hospital, (y, x_numeric, categories) in parsed.items():
    one_hot = [(np.array(categories[c])[:, None] == np.array(levels[c])).astype(np.float64)
               for c in categorical_columns]
    x = np.concatenate([x_numeric] + one_hot, axis=1)
    train[hospital], test[hospital] = preprocess.split_train_test(
        f'hospital {hospital!r}', x, y, test_fraction, seed)
  train, test = preprocess.scale_hospitals(train, test, scaling, ranges,
                                           zscore_columns=range(len(numeric)))
  feature_names = numeric + [f'{c}={level}' for c in categorical_columns for level in levels[c]]
  source = ("numeric columns: each hospital's own training mean/std" if scaling == 'zscore'
            else 'numeric columns: ranges declared in feature_ranges')
  if categorical_columns:
    source += f'; one-hot levels of {", ".join(categorical_columns)}: the values in the files'
  return FederatedData.from_arrays(
      'csv', train, test, feature_names=feature_names,
      description=(f'{len(tables)} hospitals from CSV files, label {label_column!r}, '
                   f'stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split, seed {seed}'),
      preprocessing=preprocess.preprocessing(
          scaling, scaling == 'zscore' or bool(categorical_columns), source))


def _read(hospital: str, path: str) -> _Table:
  """Reads header and rows, checking each row's field count."""
  where = preprocess.location(hospital, path)
  if not os.path.isfile(path):
    raise DataError(f'{where}: file not found')
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = [name.strip() for name in next(reader, [])]
    if not any(header):
      raise DataError(f'{where}: no header row (line 1 must name the columns)')
    duplicated = sorted({n for n in header if header.count(n) > 1})
    if duplicated or '' in header:
      raise DataError(f'{where}, line 1: header has empty or repeated column names '
                      f'{duplicated or [""]}')
    rows = []
    for fields in reader:
      if not fields:
        continue
      if len(fields) != len(header):
        line = _line(reader.line_num, len(rows) + 1)
        raise DataError(f'{preprocess.location(hospital, path, line)}: {len(fields)} fields, '
                        f'header has {len(header)}')
      rows.append((reader.line_num, fields))
  if not rows:
    raise DataError(f'{where}: no data rows after the header')
  return _Table(hospital, path, header, rows)


def _line(line: int, data_row: int) -> str:
  return f'{line} (data row {data_row})'


def _check_columns(tables: list[_Table], label_column: str,
                   categorical_columns: Sequence[str]) -> list[str]:
  """Checks the label/categorical columns and that all files share columns; numeric names."""
  if label_column in categorical_columns:
    raise DataError(f'label column {label_column!r} cannot also be a categorical column')
  roles = {label_column: 'label', **{c: 'categorical' for c in categorical_columns}}
  first = tables[0]
  for table in tables:
    where = preprocess.location(table.hospital, table.path)
    for column, role in roles.items():
      if column not in table.header:
        raise DataError(f'{where}: {role} column {column!r} missing; columns are '
                        f'{", ".join(table.header)}')
    missing = [c for c in first.header if c not in table.header]
    extra = [c for c in table.header if c not in first.header]
    if missing or extra:
      raise DataError(f'{where}: columns differ from hospital {first.hospital!r} '
                      f'({first.path}): missing {missing}, extra {extra}')
  numeric = [c for c in first.header if c != label_column and c not in categorical_columns]
  if not numeric and not categorical_columns:
    raise DataError(f'{preprocess.location(first.hospital, first.path)}: no feature '
                    f'columns besides the label {label_column!r}')
  return numeric


def _column_ranges(feature_ranges: Sequence[tuple[str, float, float]],
                   numeric: list[str]) -> dict[int, preprocess.Range]:
  """feature_ranges as index into `numeric` -> (low, high); DataError naming the field."""
  ranges = {}
  for entry in feature_ranges:
    try:
      column, low, high = entry
      low, high = float(low), float(high)
    except (TypeError, ValueError):
      raise DataError(f'data.feature_ranges: entry {entry!r} is not (column, low, high) '
                      'with numbers low and high') from None
    if column not in numeric:
      raise DataError(f'data.feature_ranges: column {column!r} is not a numeric column of the '
                      f'CSV files (numeric columns: {", ".join(numeric)})')
    if numeric.index(column) in ranges:
      raise DataError(f'data.feature_ranges: column {column!r} has more than one range')
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
      raise DataError(f'data.feature_ranges: column {column!r} has low {low} and high {high}; '
                      'need finite low < high')
    ranges[numeric.index(column)] = (low, high)
  missing = [c for i, c in enumerate(numeric) if i not in ranges]
  if missing:
    raise DataError(f"data.feature_ranges: no range for numeric column(s) {', '.join(missing)}; "
                    "data.scaling='public_ranges' needs (column, low, high) for each")
  return ranges


def _parse(table: _Table, label_column: str, numeric: list[str],
           categorical_columns: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
  """(labels int64 [N], numeric float64 [N, len(numeric)], categorical column -> values)."""
  labels, values = [], []
  categories = {c: [] for c in categorical_columns}
  for data_row, (line, fields) in enumerate(table.rows, start=1):
    row = {}
    for column, text in zip(table.header, fields):
      where = preprocess.location(table.hospital, table.path, _line(line, data_row),
                                  repr(column))
      text = text.strip()
      if not text:
        raise DataError(f'{where}: empty cell')
      if column in categorical_columns:
        row[column] = text
        continue
      value = row[column] = preprocess.parse_finite(text, where)
      if column == label_column and value not in (0, 1):
        raise DataError(f'{where}: label {text!r} is not 0 or 1')
    labels.append(int(row[label_column]))
    values.append([row[c] for c in numeric])
    for c in categorical_columns:
      categories[c].append(row[c])
  return (np.array(labels, dtype=np.int64),
          np.array(values, dtype=np.float64).reshape(len(labels), len(numeric)), categories)
