"""Feature scaling: 'public_ranges' makes each record's features depend on that record only."""

import collections
import dataclasses
import os
import re

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets, model_selection

from tff_med import data
from tff_med.data import breast_cancer, heart_disease, preprocess

CSV_RANGES = (('age', 30.0, 90.0), ('bp', 100.0, 160.0))  # narrower than the data: clips


def _write_csv(tmp_path, name, n, seed, extra_header='', extra=lambda i: ''):
  """tmp_path/NAME.csv with columns age, bp, label (+ extra) and `n` rows; its path."""
  rng = np.random.default_rng(seed)
  lines = ['age,bp,label' + extra_header] + [
      f'{rng.normal(60, 20):.1f},{rng.normal(130, 25):.1f},{i % 3 == 0:d}{extra(i)}'
      for i in range(n)]
  path = tmp_path / f'{name}.csv'
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def _csv_files(tmp_path):
  return (_write_csv(tmp_path, 'north', 40, 0), _write_csv(tmp_path, 'south', 30, 1))


def _config(dataset, scaling, data_dir, tmp_path):
  """DataConfig for `dataset` scaled by `scaling` (breast_cancer: IID, no profile shift)."""
  if dataset == 'heart_disease':
    return data.DataConfig('heart_disease', data_dir, scaling=scaling)
  if dataset == 'breast_cancer':
    return data.DataConfig('breast_cancer', partition='iid', scaling=scaling)
  return data.DataConfig('csv', csv_files=_csv_files(tmp_path), scaling=scaling,
                         feature_ranges=CSV_RANGES if scaling == 'public_ranges' else ())


def _all_rows(fed):
  """Every record's features (train and test, all hospitals) as float32 [N, F]."""
  return np.concatenate([fed.pooled('train')[0], fed.pooled('test')[0]])


def _row_counts(x):
  return collections.Counter(row.tobytes() for row in x)


def _scaled(values, low, high):
  """Independent recomputation: `values` clipped to [low, high], mapped to [-1, 1]."""
  return 2 * (np.clip(values, low, high) - low) / (high - low) - 1


def _assert_same_rows(actual, expected):
  """Equal as sets of rows, up to float32 rounding (the partition shuffles records)."""
  np.testing.assert_allclose(actual[np.lexsort(actual.T)], expected[np.lexsort(expected.T)],
                             atol=1e-6)


@pytest.mark.parametrize('dataset, dropped', [
    ('heart_disease', "hospital 'switzerland'"),
    ('breast_cancer', 'the breast_cancer pool'),
    ('csv', "hospital 'north'"),
])
@pytest.mark.parametrize('scaling', ['public_ranges', 'zscore'])
def test_removing_a_training_record_moves_other_records_only_under_zscore(
    dataset, dropped, scaling, data_dir, tmp_path, monkeypatch):
  config = _config(dataset, scaling, data_dir, tmp_path)
  full = _row_counts(_all_rows(data.load(config)))
  split = preprocess.split_train_test

  def without_first_training_record(what, *args):
    (x, y), test = split(what, *args)
    return ((x[1:], y[1:]) if what == dropped else (x, y)), test

  monkeypatch.setattr(preprocess, 'split_train_test', without_first_training_record)
  fewer = _row_counts(_all_rows(data.load(config)))
  assert sum(fewer.values()) == sum(full.values()) - 1
  changed = fewer - full  # records whose features are not among the full load's
  if scaling == 'public_ranges':
    assert not changed and sum((full - fewer).values()) == 1
  else:
    assert sum(changed.values()) > 10


def _heart_raw(data_dir, hospital):
  """(x float64 [N, 13] unscaled, in heart_disease.FEATURE_NAMES order; y [N]) via pandas."""
  path = os.path.join(data_dir, 'heart_disease', f'processed.{hospital}.data')
  frame = pd.read_csv(path, header=None, names=heart_disease.COLUMNS, na_values='?')
  frame = frame.drop(columns=['slope', 'ca', 'thal']).dropna().reset_index(drop=True)
  y = (frame.pop('num') > 0).astype(int).to_numpy()
  for column, levels in heart_disease.ONE_HOT_LEVELS.items():
    frame[column] = pd.Categorical(frame[column].astype(int), categories=levels)
  x = pd.get_dummies(frame, columns=list(heart_disease.ONE_HOT_LEVELS), drop_first=True)
  return x.astype(float).to_numpy(), y


def test_heart_disease_public_ranges_cover_the_files_and_are_used(data_dir):
  fed = heart_disease.load(data_dir, scaling='public_ranges')
  names = list(heart_disease.FEATURE_NAMES)
  ranged = [names.index(c) for c in heart_disease.PUBLIC_RANGES]
  low, high = np.array(list(heart_disease.PUBLIC_RANGES.values()), dtype=float).T
  for hospital in heart_disease.HOSPITALS:
    x, y = _heart_raw(data_dir, hospital)
    values = x[:, ranged]
    unmeasured = (values == 0) & np.isin(ranged, [names.index('trestbps'), names.index('chol')])
    assert ((values >= low) & (values <= high) | unmeasured).all()  # only the 0 codes clip
    expected = x.copy()
    expected[:, ranged] = _scaled(values, low, high)
    stratify = y if np.bincount(y).min() >= 2 else None
    train, test = model_selection.train_test_split(np.arange(len(y)), test_size=0.34,
                                                   stratify=stratify, random_state=0)
    np.testing.assert_allclose(fed.train_arrays(hospital)[0], expected[train], atol=1e-6)
    np.testing.assert_allclose(fed.test[hospital][0], expected[test], atol=1e-6)
  binary = [i for i in range(len(names)) if i not in ranged]  # 0/1 and one-hot, unchanged
  assert set(np.unique(_all_rows(fed)[:, binary])) == {0.0, 1.0}


def _descr_ranges():
  """Feature -> (min, max) parsed from the 'Summary Statistics' table of DESCR."""
  table = re.findall(r'^(\w[\w ]*) \((mean|standard error|worst)\):\s+(\S+)\s+(\S+)$',
                     datasets.load_breast_cancer().DESCR, flags=re.MULTILINE)
  prefix = {'mean': 'mean {}', 'standard error': '{} error', 'worst': 'worst {}'}
  return {prefix[kind].format(name): (float(low), float(high))
          for name, kind, low, high in table}


def test_breast_cancer_public_ranges_are_the_published_ones_and_are_used():
  cancer = datasets.load_breast_cancer()
  assert breast_cancer.PUBLISHED_RANGES == _descr_ranges()
  assert list(breast_cancer.PUBLISHED_RANGES) == list(cancer.feature_names)
  low, high = np.array(list(breast_cancer.PUBLISHED_RANGES.values())).T
  _assert_same_rows(_all_rows(breast_cancer.load(partition='iid', scaling='public_ranges')),
                    _scaled(cancer.data, low, high))


def test_csv_public_ranges_clip_and_map_numeric_columns(tmp_path):
  path = _write_csv(tmp_path, 'east', 60, 2, ',ward', lambda i: ',icu' if i % 2 else ',er')
  fed = data.load(data.DataConfig('csv', csv_files=(path,), categorical_columns=('ward',),
                                  scaling='public_ranges', feature_ranges=CSV_RANGES))
  raw = pd.read_csv(path)
  low, high = np.array([r[1:] for r in CSV_RANGES]).T
  numeric = raw[['age', 'bp']].to_numpy()
  assert ((numeric < low) | (numeric > high)).any(axis=0).all()  # both columns clip
  _assert_same_rows(_all_rows(fed), np.concatenate(
      [_scaled(numeric, low, high), pd.get_dummies(raw['ward']).to_numpy(float)], axis=1))


@pytest.mark.parametrize('dataset', ['heart_disease', 'breast_cancer', 'csv'])
def test_preprocessing_says_whether_scaling_used_the_records(dataset, data_dir, tmp_path):
  for scaling, dependent in (('zscore', True), ('public_ranges', False)):
    fed = data.load(_config(dataset, scaling, data_dir, tmp_path))
    assert fed.preprocessing['scaling'] == scaling
    assert fed.preprocessing['data_dependent'] is dependent
    assert fed.preprocessing['source']


def test_images_and_given_arrays_are_data_independent(data_dir, tmp_path):
  for scaling in preprocess.SCALINGS:
    fed = data.load(data.DataConfig('breastmnist', data_dir, scaling=scaling))
    assert fed.preprocessing['data_dependent'] is False
    assert fed.preprocessing['scaling'] == 'pixels/255'
  arrays = {'h': (np.zeros((4, 2)), np.array([0, 1, 0, 1]))}
  assert data.FederatedData.from_arrays('toy', arrays, arrays).preprocessing == {
      'scaling': 'as_given', 'data_dependent': False,
      'source': 'arrays used as passed to FederatedData.from_arrays; the caller '
                'answers for how they were made'}


def test_csv_one_hot_levels_stay_data_dependent(tmp_path):
  path = _write_csv(tmp_path, 'east', 30, 2, ',ward', lambda i: ',icu')
  fed = data.load(data.DataConfig('csv', csv_files=(path,), categorical_columns=('ward',),
                                  scaling='public_ranges', feature_ranges=CSV_RANGES))
  assert fed.preprocessing['data_dependent'] is True
  assert 'one-hot levels of ward: the values in the files' in fed.preprocessing['source']


@pytest.mark.parametrize('changes, message', [
    (dict(feature_ranges=CSV_RANGES[:1]),
     r"data.feature_ranges: no range for numeric column\(s\) bp; "
     r"data.scaling='public_ranges' needs"),
    (dict(feature_ranges=CSV_RANGES + (('weight', 40, 200),)),
     r"data.feature_ranges: column 'weight' is not a numeric column "
     r".*\(numeric columns: age, bp\)"),
    (dict(feature_ranges=CSV_RANGES + (('label', 0, 1),)),
     "data.feature_ranges: column 'label' is not a numeric column"),
    (dict(feature_ranges=(('age', 90, 30), CSV_RANGES[1])),
     "data.feature_ranges: column 'age' has low 90.0 and high 30.0; need finite low < high"),
    (dict(feature_ranges=(('age', 30, 30), CSV_RANGES[1])),
     "data.feature_ranges: column 'age' has low 30.0 and high 30.0"),
    (dict(feature_ranges=CSV_RANGES + (('age', 0, 1),)),
     "data.feature_ranges: column 'age' has more than one range"),
    (dict(feature_ranges=(('age', 30), CSV_RANGES[1])),
     r"data.feature_ranges: entry \('age', 30\) is not \(column, low, high\)"),
    (dict(scaling='zscore'),
     "data.feature_ranges: used only with data.scaling='public_ranges', not 'zscore'"),
    (dict(dataset='breast_cancer'),
     "data.feature_ranges: applies to the csv data set only, not 'breast_cancer'"),
    (dict(scaling='minmax'), "data.scaling='minmax': unknown value; choose one of zscore, "
                             'public_ranges'),
])
def test_bad_feature_ranges_name_the_field_and_column(tmp_path, changes, message):
  config = data.DataConfig('csv', csv_files=_csv_files(tmp_path), scaling='public_ranges',
                           feature_ranges=CSV_RANGES)
  with pytest.raises(data.DataError, match=f'^{message}'):
    data.load(dataclasses.replace(config, **changes))
