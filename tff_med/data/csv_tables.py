"""A user's own tabular data: one CSV file per hospital (hospital name = file stem).

Reading. Each file is read as `encoding` (default UTF-8; a UTF-8 byte-order
mark, as Excel writes it, is dropped) and its delimiter is sniffed per file
from ',', ';' and tab (the one whose header and first rows split into the same
number of fields, more than one). In a ';'-separated file a number written with
a decimal comma ('61,5', Excel in many European locales) reads as 61.5. Cells
listed in MISSING_MARKERS ('' and 'NA', 'NaN', '?', ...) are missing values.

Column roles. Every file has a header row and the same columns (any order).
The label column holds 0/1, or any values with `positive_label` naming the
value that means 1 (all others mean 0). Features are `feature_columns` when
given, else every column except the label, `drop_columns` and the ID columns.
ID columns are `id_columns` when given; else, without `feature_columns`, they
are guessed: a column named like 'id', 'patient_id', 'rownames' or 'Unnamed: 0'
whose values are unique within every file. ID columns are never trained on;
guessed ones are reported. Features are numeric except `categorical_columns`;
a feature column holding text is not guessed to be categorical: the load stops
with one error that lists every such column with a sample value, and the
field that fixes it (categorical_columns or drop_columns).

Missing values: `missing='error'` stops with the count and the first 10 cells;
'drop_rows' drops each row with a missing label or feature and reports how
many rows each hospital lost.

Every file is validated completely before anything is built. Then, per
hospital: a stratified train/test split (plain random split when a class has a
single record), numeric columns scaled (scaling 'zscore': with the hospital's
own training mean/std; 'public_ranges': clipped to the user's declared
feature_ranges and mapped to [-1, 1]), categorical columns one-hot encoded
over the union of levels seen at any hospital (sorted), features ordered
numeric then one-hot ('column=level'). That level set is read from the
records, so tables with categorical columns stay data-dependent under either
scaling.

What the loader decided (guessed ID columns, dropped rows, hospitals whose test
set holds one class, so that their AUC is undefined) is logged as a warning
and appended to FederatedData.description.
"""

import codecs
import csv
import dataclasses
import io
import logging
import math
import os
import re
from collections.abc import Sequence

import numpy as np

from tff_med.data import preprocess
from tff_med.data import schema
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData

MISSING_MARKERS = ('', 'NA', 'N/A', '#N/A', 'NaN', 'nan', 'NULL', 'null', 'None', '?')
MISSING_MODES = ('error', 'drop_rows')
DELIMITERS = (',', ';', '\t')
# Names of columns that may hold a record identifier (matched case-insensitively).
ID_NAME = re.compile(r'id|.*[_ .]id|rownames|row\.names|unnamed: \d+', re.IGNORECASE)
_SHOWN_CELLS = 10
_SNIFF_LINES = 20

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Table:
  """One file as read: header and (line number, fields) per data row."""
  hospital: str
  path: str
  header: list[str]
  rows: list[tuple[int, list[str]]]
  delimiter: str

  def cells(self, column: str):
    """(location, stripped text) of `column` in every row."""
    index = self.header.index(column)
    for data_row, (line, fields) in enumerate(self.rows, start=1):
      yield (preprocess.location(self.hospital, self.path, _line(line, data_row), repr(column)),
             fields[index].strip())


@dataclasses.dataclass
class _Roles:
  """Which columns are features (numeric, categorical), IDs, or not used."""
  numeric: list[str]
  categorical: list[str]
  ids: list[str]
  ids_guessed: bool
  unused: list[str]


def load(csv_files: Sequence[str], label_column: str,
         categorical_columns: Sequence[str] = (), test_fraction: float = 0.34,
         seed: int = 0, scaling: str = 'zscore',
         feature_ranges: Sequence[tuple[str, float, float]] = (), *,
         feature_columns: Sequence[str] = (), drop_columns: Sequence[str] = (),
         id_columns: Sequence[str] = (), positive_label: str | None = None,
         missing: str = 'error', encoding: str = 'utf-8') -> FederatedData:
  """Loads one hospital per CSV file.

  `scaling`: one of preprocess.SCALINGS; 'public_ranges' needs `feature_ranges`,
  one (column, low, high) for every numeric column. The other arguments are
  described in the module docstring.

  Raises:
    DataError: one line, naming hospital, file, line (1-based, header = line 1;
      with the 1-based data row) and column, or the config field
      (data.missing, data.positive_label, ...) that fixes it, for: a file that
      is missing, a directory, unreadable, not text in `encoding`, empty or
      without data rows, or whose delimiter is none of DELIMITERS; a row with
      the wrong number of fields; missing cells (with missing='error'); a
      non-numeric or NaN/inf value in a numeric column; a label not 0/1
      without positive_label, or a positive_label not in the files; text
      columns not declared categorical; columns named in two roles or absent;
      columns that differ between hospitals; two files with the same stem; a
      hospital left without rows; feature_ranges for a numeric column without
      a range, a range for a column that is not numeric, low >= high, or
      ranges without scaling 'public_ranges'.
  """
  preprocess.check_scaling(scaling)
  if feature_ranges and scaling != 'public_ranges':
    raise DataError(f"data.feature_ranges: used only with data.scaling='public_ranges', "
                    f'not {scaling!r}')
  if missing not in MISSING_MODES:
    raise DataError(f'data.missing={missing!r}: choose one of {", ".join(MISSING_MODES)}')
  try:
    codecs.lookup(encoding)
  except LookupError:
    raise DataError(f'data.csv_encoding={encoding}: unknown text encoding (e.g. utf-8, '
                    'cp1252, latin-1)') from None
  if not csv_files:
    raise DataError('data.csv_files=(): no CSV files given; pass one file per hospital')
  tables = {}
  for path in csv_files:
    hospital = os.path.splitext(os.path.basename(path))[0]
    if hospital in tables:
      raise DataError(f'files {tables[hospital].path} and {path} both give hospital name '
                      f'{hospital!r} (the file stem); rename one')
    tables[hospital] = read_table(hospital, path, encoding)
  roles = _check_columns(list(tables.values()), label_column, categorical_columns,
                         feature_columns, drop_columns, id_columns)
  _check_text(list(tables.values()), label_column, positive_label, roles.numeric)
  notes = []
  if roles.ids:
    notes.append(f'ID columns, not trained on: {", ".join(roles.ids)}'
                 + (' (guessed from their names and unique values; data.id_columns names '
                    'them, data.feature_columns chooses the features)'
                    if roles.ids_guessed else ''))
  if roles.unused:
    notes.append(f'columns not in data.feature_columns, not used: {", ".join(roles.unused)}')
  used = [label_column] + roles.numeric + roles.categorical
  dropped = check_missing(tables, used, missing)
  if dropped is not None:
    notes.append('rows dropped for missing values (data.missing=drop_rows): '
                 + ', '.join(f'{h} {n}' for h, n in dropped.items()))
  ranges = (_column_ranges(feature_ranges, roles.numeric) if scaling == 'public_ranges'
            else {})
  parsed = {h: _parse(t, label_column, positive_label, roles.numeric, roles.categorical)
            for h, t in tables.items()}

  levels = {c: sorted(set().union(*(p[2][c] for p in parsed.values())))
            for c in roles.categorical}
  train, test = {}, {}
  for hospital, (y, x_numeric, categories) in parsed.items():
    one_hot = [(np.array(categories[c])[:, None] == np.array(levels[c])).astype(np.float64)
               for c in roles.categorical]
    x = np.concatenate([x_numeric] + one_hot, axis=1)
    train[hospital], test[hospital] = preprocess.split_train_test(
        f'hospital {hospital!r}', x, y, test_fraction, seed)
  one_class = {h: int(y[0]) for h, (_, y) in test.items() if len(np.unique(y)) < 2}
  if one_class:
    notes.append('test set with one class, so its AUC is undefined (NaN, left out of '
                 'means over hospitals): '
                 + ', '.join(f'{h} (all {c}, {len(test[h][1])} records)'
                             for h, c in one_class.items()))
  train, test, transforms = preprocess.scale_hospitals(
      train, test, scaling, ranges, zscore_columns=range(len(roles.numeric)))
  feature_names = roles.numeric + [f'{c}={level}' for c in roles.categorical
                                   for level in levels[c]]
  source = ("numeric columns: each hospital's own training mean/std" if scaling == 'zscore'
            else 'numeric columns: ranges declared in feature_ranges')
  if roles.categorical:
    source += f'; one-hot levels of {", ".join(roles.categorical)}: the values in the files'
  for note in notes:
    _log.warning('CSV data: %s', note)
  label = (f'label {label_column!r}' if positive_label is None
           else f'label {label_column!r} = {positive_label!r}')
  data_dependent = scaling == 'zscore' or bool(roles.categorical)
  schemas = schema.table_schemas(
      [schema.Feature(c, c) for c in roles.numeric]
      + [schema.Feature(f'{c}={level}', c, level) for c in roles.categorical
         for level in levels[c]],
      transforms, source, data_dependent, per_hospital=scaling == 'zscore',
      levels={c: tuple(levels[c]) for c in roles.categorical}, label=label_column,
      positive_label=positive_label, id_columns=tuple(roles.ids))
  return FederatedData.from_arrays(
      'csv', train, test, feature_names=feature_names, schemas=schemas,
      description='; '.join(
          [f'{len(tables)} hospitals from CSV files, {label}, stratified '
           f'{1 - test_fraction:.0%}/{test_fraction:.0%} split, seed {seed}'] + notes),
      preprocessing=preprocess.preprocessing(scaling, data_dependent, source))


def read_table(hospital: str, path: str, encoding: str) -> Table:
  """Reads header and rows, checking each row's field count; one-line DataErrors."""
  where = preprocess.location(hospital, path)
  if not os.path.exists(path):
    raise DataError(f'{where}: file not found')
  if os.path.isdir(path):
    raise DataError(f'{where}: is a directory, not a CSV file')
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f'{where}: cannot be read ({e.strerror or e})') from None
  if raw.startswith(b'PK\x03\x04'):
    raise DataError(f'{where}: is a zip archive (an Excel .xlsx workbook?), not CSV text; '
                    'save it as CSV')
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise DataError(f'{where}, line {line}: not {encoding} text (byte '
                    f'0x{raw[e.start]:02x}); give its encoding with data.csv_encoding, '
                    'e.g. data.csv_encoding=cp1252 for a file saved by Excel on '
                    'Windows') from None
  text = text.removeprefix('\ufeff')
  if not text.strip():
    raise DataError(f'{where}: no header row (the file is '
                    f'{"empty" if not raw else "blank"}; line 1 must name the columns)')
  delimiter = _sniff(text, where)
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter)
  try:
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
                        f'header has {len(header)} ({_delimiter_name(delimiter)}-separated)')
      rows.append((reader.line_num, fields))
  except csv.Error as e:
    raise DataError(f'{where}, line {reader.line_num}: not readable as CSV ({e})') from None
  if not rows:
    raise DataError(f'{where}: no data rows after the header')
  return Table(hospital, path, header, rows, delimiter)


def _sniff(text: str, where: str) -> str:
  """The delimiter of DELIMITERS that splits the first lines into equal field counts > 1."""
  sample = text.splitlines()[:_SNIFF_LINES]
  best, best_score = None, None
  for delimiter in DELIMITERS:
    try:
      rows = [r for r in csv.reader(sample, delimiter=delimiter) if r]
    except csv.Error:
      continue
    if not rows or len(rows[0]) < 2:
      continue
    score = (all(len(r) == len(rows[0]) for r in rows), len(rows[0]))
    if best_score is None or score > best_score:
      best, best_score = delimiter, score
  if best is None:
    raise DataError(f'{where}, line 1: header has a single column when split at any of '
                    f"{', '.join(_delimiter_name(d) for d in DELIMITERS)}; separate the "
                    'columns with one of them')
  return best


def _delimiter_name(delimiter: str) -> str:
  return 'tab' if delimiter == '\t' else repr(delimiter)


def _line(line: int, data_row: int) -> str:
  return f'{line} (data row {data_row})'


def _check_columns(tables: list[Table], label_column: str,
                   categorical_columns: Sequence[str], feature_columns: Sequence[str],
                   drop_columns: Sequence[str], id_columns: Sequence[str]) -> _Roles:
  """Checks the named columns and that all files share columns; the column roles."""
  if feature_columns and drop_columns:
    raise DataError('data.drop_columns: give it or data.feature_columns, not both (with '
                    'data.feature_columns every other column is left out)')
  named = {'data.label_column': [label_column], 'data.categorical_columns': categorical_columns,
           'data.feature_columns': feature_columns, 'data.drop_columns': drop_columns,
           'data.id_columns': id_columns}
  first = tables[0]
  for table in tables:
    where = preprocess.location(table.hospital, table.path)
    for column, role in [(label_column, 'label')] + [(c, 'categorical')
                                                     for c in categorical_columns]:
      if column not in table.header:
        raise DataError(f'{where}: {role} column {column!r} missing; columns are '
                        f'{", ".join(table.header)}')
    missing = [c for c in first.header if c not in table.header]
    extra = [c for c in table.header if c not in first.header]
    if missing or extra:
      raise DataError(f'{where}: columns differ from hospital {first.hospital!r} '
                      f'({first.path}): missing {missing}, extra {extra}')
  for field in ('data.feature_columns', 'data.drop_columns', 'data.id_columns'):
    absent = [c for c in named[field] if c not in first.header]
    if absent:
      raise DataError(f'{field}: {", ".join(map(repr, absent))} not among the columns of '
                      f'{first.path} ({", ".join(first.header)})')
  roles = {}
  for field in ('data.label_column', 'data.id_columns', 'data.drop_columns'):
    for column in named[field]:
      if column in roles:
        raise DataError(f'column {column!r} is named in both {roles[column]} and {field}')
      roles[column] = field
  for field in ('data.categorical_columns', 'data.feature_columns'):
    for column in named[field]:
      if column in roles:
        raise DataError(f'column {column!r} is named in both {roles[column]} and {field}')
  if feature_columns:
    stray = [c for c in categorical_columns if c not in feature_columns]
    if stray:
      raise DataError(f'data.categorical_columns: {", ".join(map(repr, stray))} not among '
                      'data.feature_columns; list every feature there')
    features = list(feature_columns)
  else:
    features = [c for c in first.header if c not in roles]
  ids, guessed = list(id_columns), False
  if not id_columns and not feature_columns:
    ids = [c for c in features if c not in categorical_columns and _looks_like_id(c, tables)]
    features, guessed = [c for c in features if c not in ids], True
  unused = ([c for c in first.header if c not in features and c != label_column
             and c not in ids] if feature_columns else [])
  numeric = [c for c in features if c not in categorical_columns]
  if not features:
    raise DataError(f'{preprocess.location(first.hospital, first.path)}: no feature '
                    f'columns besides the label {label_column!r}')
  return _Roles(numeric, list(categorical_columns), ids, guessed and bool(ids), unused)


def _looks_like_id(column: str, tables: list[Table]) -> bool:
  """Named like an identifier and unique within every file."""
  if not ID_NAME.fullmatch(column):
    return False
  for table in tables:
    values = [text for _, text in table.cells(column)]
    if len(set(values)) != len(values):
      return False
  return True


def _check_text(tables: list[Table], label_column: str, positive_label: str | None,
                numeric: list[str]) -> None:
  """One DataError for a text label without positive_label and for every text column."""
  problems = []
  labels = sorted({text for t in tables for _, text in t.cells(label_column)
                   if text not in MISSING_MARKERS})
  if positive_label is not None and positive_label not in labels:
    raise DataError(f'data.positive_label={positive_label}: not a value of label column '
                    f'{label_column!r}; values seen: {_values(labels)}')
  text_labels = [(where, text) for t in tables for where, text in t.cells(label_column)
                 if text not in MISSING_MARKERS and number(text, t.delimiter) is None]
  if positive_label is None and text_labels:
    where, text = text_labels[0]
    problems.append(f'label column {label_column!r} holds text (e.g. {text!r} at {where}), '
                    f'values seen: {_values(labels)}; name the value that means 1 with '
                    'data.positive_label=VALUE')
  text_columns = []
  for column in numeric:
    cells = [(where, text, t.delimiter) for t in tables for where, text in t.cells(column)
             if text not in MISSING_MARKERS]
    if cells and all(number(text, d) is None for _, text, d in cells):
      text_columns.append((column, cells[0]))
  if text_columns:
    names = ','.join(c for c, _ in text_columns)
    problems.append(
        f'{len(text_columns)} column(s) hold text, not numbers: '
        + '; '.join(f'{c!r} (e.g. {text!r} at {where})' for c, (where, text, _) in text_columns)
        + f'; one-hot encode them with data.categorical_columns={names} or leave them out '
        f'with data.drop_columns={names}')
  if problems:
    raise DataError(' | '.join(problems))


def _values(values: list[str], limit: int = 10) -> str:
  shown = ', '.join(map(repr, values[:limit]))
  return shown + (f' and {len(values) - limit} more' if len(values) > limit else '')


def number(text: str, delimiter: str) -> float | None:
  """`text` as a float (a decimal comma in ';'-separated files), else None."""
  if delimiter == ';' and re.fullmatch(r'[-+]?\d*,\d+', text):
    text = text.replace(',', '.')
  try:
    return float(text)
  except ValueError:
    return None


def parse_number(text: str, delimiter: str, where: str) -> float:
  """`text` as a finite float (see `number`); DataError prefixed by `where` otherwise."""
  value = number(text, delimiter)
  return (value if value is not None and math.isfinite(value)
          else preprocess.parse_finite(text, where))


def check_missing(tables: dict[str, Table], used: list[str],
                  missing: str) -> dict[str, int] | None:
  """Raises on missing cells of `used` columns ('error'), or drops their rows in place
  ('drop_rows') and returns hospital -> rows dropped."""
  cells, dropped = [], {}
  for hospital, table in tables.items():
    indices = [table.header.index(c) for c in used]
    keep = []
    for data_row, (line, fields) in enumerate(table.rows, start=1):
      blank = [i for i in indices if fields[i].strip() in MISSING_MARKERS]
      if not blank:
        keep.append((line, fields))
      for i in blank:
        cells.append((preprocess.location(hospital, table.path, _line(line, data_row),
                                          repr(table.header[i])), fields[i].strip()))
    dropped[hospital] = len(table.rows) - len(keep)
    if missing == 'drop_rows':
      if not keep:
        raise DataError(f'{preprocess.location(hospital, table.path)}: every row has a '
                        'missing value (data.missing=drop_rows drops them all)')
      table.rows = keep
  if missing == 'drop_rows':
    return dropped
  if len(cells) == 1:
    where, text = cells[0]
    raise DataError(f'{where}: {"empty cell" if not text else f"missing value {text!r}"}; '
                    'data.missing=drop_rows drops rows with a missing value')
  if cells:
    shown = '; '.join(f'{where} ({text!r})' for where, text in cells[:_SHOWN_CELLS])
    raise DataError(f'{len(cells)} missing values (empty or one of '
                    f'{", ".join(repr(m) for m in MISSING_MARKERS[1:])}) in '
                    f'{sum(n > 0 for n in dropped.values())} file(s); the first '
                    f'{min(len(cells), _SHOWN_CELLS)}: {shown}; data.missing=drop_rows drops '
                    'rows with a missing value')
  return None


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


def _parse(table: Table, label_column: str, positive_label: str | None, numeric: list[str],
           categorical_columns: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
  """(labels int64 [N], numeric float64 [N, len(numeric)], categorical column -> values)."""
  labels, values = [], []
  categories = {c: [] for c in categorical_columns}
  index = {c: table.header.index(c) for c in [label_column, *numeric, *categorical_columns]}
  for data_row, (line, fields) in enumerate(table.rows, start=1):
    def where(column):
      return preprocess.location(table.hospital, table.path, _line(line, data_row),
                                 repr(column))
    text = fields[index[label_column]].strip()
    if positive_label is not None:
      labels.append(int(text == positive_label))
    else:
      label = preprocess.parse_finite(text, where(label_column))
      if label not in (0, 1):
        raise DataError(f'{where(label_column)}: label {text!r} is not 0 or 1; name the '
                        'value that means 1 with data.positive_label=VALUE')
      labels.append(int(label))
    row = []
    for column in numeric:
      row.append(parse_number(fields[index[column]].strip(), table.delimiter, where(column)))
    values.append(row)
    for c in categorical_columns:
      categories[c].append(fields[index[c]].strip())
  return (np.array(labels, dtype=np.int64),
          np.array(values, dtype=np.float64).reshape(len(labels), len(numeric)), categories)
