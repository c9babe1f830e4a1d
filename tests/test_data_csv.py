"""CSV tables, one file per hospital: building and validation."""

import re

import numpy as np
import pytest

from tff_med import data
from tff_med.data import csv_tables

HEADER = 'age,ward,bp,label'


def _rows(n, seed, wards):
  rng = np.random.default_rng(seed)
  return [f'{rng.normal(60, 10):.1f},{wards[i % len(wards)]},{rng.normal(130, 15):.1f},'
          f'{i % 3 == 0:d}' for i in range(n)]


def _write(tmp_path, name, lines):
  path = tmp_path / f'{name}.csv'
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def _good_files(tmp_path):
  return [_write(tmp_path, 'north', [HEADER] + _rows(40, 0, ['icu', 'er'])),
          _write(tmp_path, 'south', ['label,bp,ward,age']  # same columns, other order
                 + [','.join(reversed(r.split(','))) for r in _rows(30, 1, ['er', 'cardio'])])]


def test_loads_one_hospital_per_file(tmp_path):
  fed = data.load(data.DataConfig('csv', csv_files=tuple(_good_files(tmp_path)),
                                  categorical_columns=('ward',)))
  assert fed.hospitals == ('north', 'south')
  assert fed.feature_names == ('age', 'bp', 'ward=cardio', 'ward=er', 'ward=icu')
  for hospital, n in (('north', 40), ('south', 30)):
    x, y = fed.train_arrays(hospital)
    x_test, y_test = fed.test[hospital]
    assert len(y) + len(y_test) == n
    assert abs(y.mean() - y_test.mean()) < 0.1  # stratified
    np.testing.assert_allclose(x[:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:, :2].std(axis=0), 1, atol=1e-4)
    assert set(np.unique(x[:, 2:])) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.concatenate([x, x_test])[:, 2:].sum(axis=1), 1)
  assert fed.train_arrays('north')[0][:, 2].max() == 0  # no 'cardio' in the north


def test_single_record_class_falls_back_to_plain_split(tmp_path):
  lines = [HEADER] + [f'{50 + i},icu,{120 + i},{int(i == 0)}' for i in range(12)]
  fed = csv_tables.load([_write(tmp_path, 'tiny', lines)], 'label', ('ward',))
  assert fed.num_train('tiny') + len(fed.test['tiny'][1]) == 12


def _bad(tmp_path, row, replace_with):
  """North's data row `row` (1-based) replaced; returns (files, north path)."""
  files = _good_files(tmp_path)
  lines = open(files[0]).read().splitlines()
  lines[row] = replace_with
  _write(tmp_path, 'north', lines)
  return files, files[0]


@pytest.mark.parametrize('row, text, message', [
    (3, '61.0,icu,120.5', r'line 4 \(data row 3\): 3 fields, header has 4'),
    (2, '61.0,,120.5,0', r"line 3 \(data row 2\), column 'ward': empty cell"),
    (5, '61.0,icu,high,0', r"line 6 \(data row 5\), column 'bp': value 'high' is not a number"),
    (1, '61.0,icu,120.5,2', r"line 2 \(data row 1\), column 'label': label '2' is not 0 or 1"),
    (7, "nan,icu,120.5,1", r"line 8 \(data row 7\), column 'age': missing value 'nan'"),
    (7, "1e999,icu,120.5,1", r"line 8 \(data row 7\), column 'age': value '1e999' is NaN or inf"),
    (9, '61.0,icu,-inf,1', r"line 10 \(data row 9\), column 'bp': value '-inf' is NaN or inf"),
])
def test_bad_cell_names_hospital_file_line_and_column(tmp_path, row, text, message):
  files, path = _bad(tmp_path, row, text)
  with pytest.raises(data.DataError, match=f"hospital 'north', file {re.escape(path)}, {message}"):
    csv_tables.load(files, 'label', ('ward',))


@pytest.mark.parametrize('lines, message', [
    ([], 'no header row'),
    ([HEADER], 'no data rows'),
    (['age,ward,bp,outcome', '61,icu,120,1'], "label column 'label' missing"),
    (['age,ward,label', '61,icu,1'], r"columns differ from hospital 'north' .*missing \['bp'\]"),
    (['age,ward,bp,label,sex', '61,icu,120,1,0'],
     r"columns differ .*: missing \[\], extra \['sex'\]"),
])
def test_bad_file_names_hospital_and_file(tmp_path, lines, message):
  files = _good_files(tmp_path)
  path = _write(tmp_path, 'south', lines)
  with pytest.raises(data.DataError, match=f"hospital 'south', file {re.escape(path)}: {message}"):
    csv_tables.load(files, 'label', ('ward',))


def test_missing_file_and_categorical_column(tmp_path):
  files = _good_files(tmp_path)
  missing = str(tmp_path / 'east.csv')
  with pytest.raises(data.DataError, match=f"hospital 'east', file {re.escape(missing)}: "
                     'file not found'):
    csv_tables.load(files + [missing], 'label')
  with pytest.raises(data.DataError, match="categorical column 'unit' missing"):
    csv_tables.load(files, 'label', ('unit',))


def test_files_with_the_same_stem(tmp_path):
  files = _good_files(tmp_path)
  (tmp_path / 'other').mkdir()
  twin = _write(tmp_path / 'other', 'north', open(files[0]).read().splitlines())
  with pytest.raises(data.DataError, match="both give hospital name 'north'"):
    csv_tables.load(files + [twin], 'label', ('ward',))
