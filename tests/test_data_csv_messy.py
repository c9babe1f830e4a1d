"""Real-world CSV exports: column roles, string labels, text columns, missing
values, Excel's BOM / ';' / other encodings, one-class test sets and file
problems, each as one line naming the file (and, from the binary, the flag)."""

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tff_med import data


def _table(n, seed, label=lambda i: str(int(i % 3 == 0))):
  """Header + n rows: id (unique), age, bp, label."""
  rng = np.random.default_rng(seed)
  return ['patient_id,age,bp,label'] + [
      f'P{seed}-{i},{rng.normal(60, 10):.1f},{rng.normal(130, 15):.1f},{label(i)}'
      for i in range(n)]


def _write(tmp_path, name, lines, encoding='utf-8', sep='\n'):
  path = tmp_path / name
  path.write_bytes((sep.join(lines) + sep).encode(encoding))
  return str(path)


def _load(files, **kwargs):
  kwargs.setdefault('label_column', 'label')
  return data.load(data.DataConfig('csv', csv_files=tuple(files), **kwargs))


def test_id_column_is_guessed_reported_and_never_trained_on(tmp_path, caplog):
  files = [_write(tmp_path, 'north.csv', _table(30, 0)),
           _write(tmp_path, 'south.csv', _table(20, 1))]
  with caplog.at_level(logging.WARNING):
    fed = _load(files)
  assert fed.feature_names == ('age', 'bp')
  assert 'ID columns, not trained on: patient_id (guessed' in fed.description
  assert 'patient_id' in caplog.text
  # Named explicitly: no guess, and a column not named like an ID can be one.
  fed = _load(files, id_columns=('patient_id', 'bp'))
  assert fed.feature_names == ('age',)
  assert fed.description.endswith('; ID columns, not trained on: patient_id, bp')


def test_id_like_names_without_unique_values_stay_features(tmp_path):
  lines = ['Unnamed: 0,ward_id,age,label'] + [f'{i},{i % 2},{50 + i},{i % 2}'
                                                for i in range(20)]
  fed = _load([_write(tmp_path, 'a.csv', lines)])
  assert fed.feature_names == ('ward_id', 'age')  # 'Unnamed: 0' is unique, ward_id is not
  assert 'ID columns, not trained on: Unnamed: 0' in fed.description


def test_feature_and_drop_columns(tmp_path):
  files = [_write(tmp_path, 'north.csv', _table(30, 0))]
  assert _load(files, feature_columns=('bp',)).feature_names == ('bp',)
  fed = _load(files, feature_columns=('bp', 'age'))
  assert fed.feature_names == ('bp', 'age')
  assert 'not used: patient_id' in fed.description
  assert _load(files, drop_columns=('age',)).feature_names == ('bp',)
  with pytest.raises(data.DataError, match='^data.drop_columns: give it or '
                     'data.feature_columns, not both'):
    _load(files, feature_columns=('bp',), drop_columns=('age',))
  with pytest.raises(data.DataError, match=r"^data.feature_columns: 'weight' not among the "
                     r'columns of .*north.csv \(patient_id, age, bp, label\)'):
    _load(files, feature_columns=('weight',))
  with pytest.raises(data.DataError, match="column 'label' is named in both "
                     'data.label_column and data.drop_columns'):
    _load(files, drop_columns=('label',))
  # A column that would be silently ignored is an error.
  with pytest.raises(data.DataError, match="^data.categorical_columns: 'age' not among "
                     'data.feature_columns'):
    _load(files, feature_columns=('bp',), categorical_columns=('age',))
  with pytest.raises(data.DataError, match="column 'patient_id' is named in both "
                     'data.id_columns and data.feature_columns'):
    _load(files, feature_columns=('bp', 'patient_id'), id_columns=('patient_id',))


def test_positive_label_reads_string_labels(tmp_path):
  answers = ['Yes' if i % 4 == 0 else 'No' for i in range(40)]  # 10 Yes
  files = [_write(tmp_path, 'north.csv', _table(40, 0, label=lambda i: answers[i]))]
  fed = _load(files, positive_label='Yes')
  y = np.concatenate([fed.train_arrays('north')[1], fed.test['north'][1]])
  assert len(y) == 40 and y.sum() == 10
  with pytest.raises(data.DataError, match=r"^label column 'label' holds text \(e.g. 'Yes' "
                     f"at hospital 'north', file {re.escape(files[0])}, line 2 "
                     r"\(data row 1\), column 'label'\), values seen: 'No', 'Yes'; name the "
                     r'value that means 1 with data.positive_label=VALUE$'):
    _load(files)
  with pytest.raises(data.DataError, match=r"^data.positive_label=yes: not a value of label "
                     r"column 'label'; values seen: 'No', 'Yes'"):
    _load(files, positive_label='yes')


def test_every_text_column_in_one_error(tmp_path):
  lines = ['age,sex,smoker,bp,label'] + [
      f'{50 + i},{"MF"[i % 2]},{["yes", "no"][i % 2]},{120 + i},{i % 2}' for i in range(12)]
  path = _write(tmp_path, 'north.csv', lines)
  with pytest.raises(data.DataError) as error:
    _load([path])
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith('2 column(s) hold text, not numbers: ')
  assert f"'sex' (e.g. 'M' at hospital 'north', file {path}, line 2 (data row 1)" in message
  assert "'smoker' (e.g. 'yes'" in message
  assert message.endswith('one-hot encode them with data.categorical_columns=sex,smoker or '
                          'leave them out with data.drop_columns=sex,smoker')
  fed = _load([path], categorical_columns=('sex', 'smoker'))
  assert fed.feature_names == ('age', 'bp', 'sex=F', 'sex=M', 'smoker=no', 'smoker=yes')


def _with_missing(tmp_path):
  """north: 40 rows, rows 3..17 (15 rows) with 'NA' in bp; south: 30 clean rows."""
  north = _table(40, 0)
  for row in range(3, 18):
    fields = north[row].split(',')
    fields[2] = 'NA' if row % 2 else ''
    north[row] = ','.join(fields)
  return [_write(tmp_path, 'north.csv', north), _write(tmp_path, 'south.csv', _table(30, 1))]


def test_missing_values_error_lists_count_and_first_ten(tmp_path):
  files = _with_missing(tmp_path)
  with pytest.raises(data.DataError) as error:
    _load(files)
  message = str(error.value)
  assert message.startswith('15 missing values (empty or one of ')
  assert 'in 1 file(s); the first 10: ' in message
  assert len(re.findall(r"line \d+ \(data row \d+\), column 'bp'", message)) == 10
  assert f"file {files[0]}, line 4 (data row 3), column 'bp' ('NA')" in message
  assert "line 13 (data row 12), column 'bp' ('')" in message
  assert 'line 14 (data row 13)' not in message  # the 11th
  assert message.endswith('data.missing=drop_rows drops rows with a missing value')


def test_missing_values_drop_rows_reports_rows_lost(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    fed = _load(_with_missing(tmp_path), missing='drop_rows')
  assert fed.num_train('north') + len(fed.test['north'][1]) == 25
  assert fed.num_train('south') + len(fed.test['south'][1]) == 30
  assert 'rows dropped for missing values (data.missing=drop_rows): north 15, south 0' in (
      fed.description)
  assert 'north 15, south 0' in caplog.text
  with pytest.raises(data.DataError, match="^data.missing='skip': choose one of error, "
                     'drop_rows'):
    _load(_with_missing(tmp_path), missing='skip')


def test_excel_exports_bom_semicolon_decimal_comma_tab(tmp_path):
  lines = _table(30, 0)
  plain = _load([_write(tmp_path, 'h.csv', lines)])
  semicolon = [lines[0].replace(',', ';')] + [
      ';'.join(f.replace('.', ',') for f in line.split(',')) for line in lines[1:]]
  os.makedirs(tmp_path / 'excel')
  (tmp_path / 'tab').mkdir()
  for fed in (_load([_write(tmp_path / 'excel', 'h.csv', semicolon, 'utf-8-sig', '\r\n')]),
              _load([_write(tmp_path / 'tab', 'h.csv', [s.replace(',', '\t') for s in lines],
                            'utf-8-sig')])):
    assert fed.feature_names == plain.feature_names == ('age', 'bp')
    np.testing.assert_allclose(fed.train_arrays('h')[0], plain.train_arrays('h')[0])
    np.testing.assert_array_equal(fed.test['h'][1], plain.test['h'][1])


def test_unknown_delimiter_is_named(tmp_path):
  path = _write(tmp_path, 'h.csv', [s.replace(',', '|') for s in _table(10, 0)])
  with pytest.raises(data.DataError, match=f"^hospital 'h', file {re.escape(path)}, line 1: "
                     "header has a single column when split at any of ',', ';', tab"):
    _load([path])


def test_non_utf8_file_names_the_file_and_the_encoding_field(tmp_path):
  lines = ['city,age,label'] + [f'{["Montréal", "Zürich"][i % 2]},{50 + i},{i % 2}'
                                for i in range(12)]
  path = _write(tmp_path, 'h.csv', lines, encoding='cp1252')
  with pytest.raises(data.DataError, match=f"^hospital 'h', file {re.escape(path)}, line 2: "
                     r'not utf-8 text \(byte 0xe9\); give its encoding with '
                     'data.csv_encoding, e.g. data.csv_encoding=cp1252'):
    _load([path], categorical_columns=('city',))
  fed = _load([path], categorical_columns=('city',), csv_encoding='cp1252')
  assert fed.feature_names == ('age', 'city=Montréal', 'city=Zürich')
  with pytest.raises(data.DataError, match='^data.csv_encoding=klingon: unknown text encoding'):
    _load([path], csv_encoding='klingon')


def test_one_class_test_set_warns_at_load(tmp_path, caplog):
  files = [_write(tmp_path, 'north.csv', _table(30, 0)),
           _write(tmp_path, 'healthy.csv', _table(12, 1, label=lambda i: '0'))]
  with caplog.at_level(logging.WARNING):
    fed = _load(files)
  note = ('test set with one class, so its AUC is undefined (NaN, left out of means over '
          'hospitals): healthy (all 0, 5 records)')
  assert note in fed.description and note in caplog.text
  assert 'north (all' not in fed.description


def test_file_problems_are_one_line_naming_the_file(tmp_path, monkeypatch):
  good = _write(tmp_path, 'north.csv', _table(20, 0))
  (tmp_path / 'folder.csv').mkdir()
  empty = _write(tmp_path, 'empty.csv', [])
  (tmp_path / 'empty.csv').write_bytes(b'')
  book = tmp_path / 'book.csv'
  book.write_bytes(b'PK\x03\x04' + bytes(range(256)))
  cases = [(str(tmp_path / 'folder.csv'), 'is a directory, not a CSV file'),
           (empty, r'no header row \(the file is empty; line 1 must name the columns\)'),
           (str(book), r'is a zip archive \(an Excel .xlsx workbook\?\), not CSV text')]
  for path, message in cases:
    hospital = os.path.splitext(os.path.basename(path))[0]
    with pytest.raises(data.DataError, match=f"^hospital '{hospital}', file "
                       f'{re.escape(path)}: {message}'):
      _load([good, path])
  real_open = open

  def unreadable(path, *args, **kwargs):
    if str(path) == good:
      raise PermissionError(13, 'Permission denied')
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr('builtins.open', unreadable)
  with pytest.raises(data.DataError, match=f"^hospital 'north', file {re.escape(good)}: "
                     r'cannot be read \(Permission denied\)$'):
    _load([good])


def test_csv_fields_with_another_dataset_are_an_error():
  for field, value in (('positive_label', 'Yes'), ('missing', 'drop_rows'),
                       ('id_columns', ('mrn',)), ('csv_encoding', 'cp1252')):
    with pytest.raises(data.DataError, match=f'^data.{field}: applies to the csv data set '
                       "only, not 'breast_cancer'"):
      data.load(data.DataConfig('breast_cancer', **{field: value}))


def _train(*flags):
  return subprocess.run([sys.executable, '-m', 'experiments.train', *flags],
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


@pytest.mark.parametrize('make, culprits', [
    (lambda d: (d / 'south.csv').mkdir(), ['south.csv: is a directory']),
    (lambda d: _write(d, 'south.csv', _table(20, 1) + ['Zürich,50,120,1'], 'cp1252'),
     ['south.csv, line 22: not utf-8 text', '--csv_encoding=cp1252']),
    (lambda d: _write(d, 'south.csv', _table(20, 1, label=lambda i: 'Yes' if i % 2 else 'No')),
     ["label column 'label' holds text (e.g. 'No' at hospital 'south'", '--positive_label=VALUE']),
])
def test_binary_reports_file_problems_in_one_line(tmp_path, make, culprits):
  _write(tmp_path, 'north.csv', _table(20, 0))
  make(tmp_path)
  result = _train('--dataset=csv', f'--csv_files={tmp_path}/north.csv,{tmp_path}/south.csv',
                  f'--output_dir={tmp_path}/out', '--rounds=1')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  error = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(error) == 1, result.stderr[-2000:]
  for culprit in culprits:
    assert culprit in error[0]
  assert 'data.' not in error[0]
  assert not os.path.exists(tmp_path / 'out' / 'summary.json')


def test_binary_prints_the_loaders_notes_with_flag_names(tmp_path):
  north = _table(30, 0)
  north[5] = north[5].rsplit(',', 2)[0] + ',NA,1'
  _write(tmp_path, 'north.csv', north)
  _write(tmp_path, 'south.csv', _table(20, 1))
  result = _train('--dataset=csv', f'--csv_files={tmp_path}/north.csv,{tmp_path}/south.csv',
                  f'--output_dir={tmp_path}/out', '--rounds=1', '--missing=drop_rows')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'ID columns, not trained on: patient_id (guessed' in result.stderr
  assert '--id_columns names them' in result.stderr
  assert 'rows dropped for missing values (--missing=drop_rows): north 1, south 0' in (
      result.stderr)


def test_binary_says_which_hospitals_the_mean_auc_leaves_out(tmp_path):
  """A one-class test set: its AUC is n/a, and the mean over hospitals says it
  covers 1 of 2 hospitals, equal to the other hospital's AUC."""
  _write(tmp_path, 'north.csv', _table(30, 0))
  _write(tmp_path, 'healthy.csv', _table(12, 1, label=lambda i: '0'))
  result = _train('--dataset=csv',
                  f'--csv_files={tmp_path}/north.csv,{tmp_path}/healthy.csv',
                  f'--output_dir={tmp_path}/out', '--rounds=1')
  assert result.returncode == 0, result.stderr[-2000:]
  assert ('(AUC over 1 of 2 hospitals: n/a for healthy, whose test set holds one class)'
          in result.stdout)
  with open(tmp_path / 'out' / 'summary.json') as f:
    summary = json.load(f)
  assert summary['per_hospital']['healthy']['auc'] is None
  assert summary['mean_hospital']['auc_hospitals'] == 1
  assert summary['mean_hospital']['auc'] == summary['per_hospital']['north']['auc']
