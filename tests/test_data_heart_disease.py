"""UCI Heart Disease loader against a pandas/sklearn reference built from the raw files."""

import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn import model_selection

from tff_med import data
from tff_med.data import heart_disease

HOSPITALS = ('cleveland', 'hungarian', 'switzerland', 'va')
ROWS_KEPT = {'cleveland': 303, 'hungarian': 261, 'switzerland': 46, 'va': 130}
SPLITS = {'cleveland': (199, 104), 'hungarian': (172, 89), 'switzerland': (30, 16),
          'va': (85, 45)}
COLUMNS = ['age', 'sex', 'cp', 'trestbps', 'chol', 'fbs', 'restecg', 'thalach', 'exang',
           'oldpeak', 'slope', 'ca', 'thal', 'num']


@pytest.fixture(scope='module')
def heart(data_dir):
  return heart_disease.load(data_dir)


def _raw(data_dir: str, hospital: str) -> pd.DataFrame:
  path = os.path.join(data_dir, 'heart_disease', f'processed.{hospital}.data')
  frame = pd.read_csv(path, header=None, names=COLUMNS, na_values='?')
  return frame.drop(columns=['slope', 'ca', 'thal']).dropna().reset_index(drop=True)


def _reference_train(data_dir: str, hospital: str,
                     flamby: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Z-scored training features and labels, computed independently with pandas;
  `flamby`: with FLamby's own split (its dataset code, fed_heart_disease)."""
  frame = _raw(data_dir, hospital)
  y = (frame.pop('num') > 0).astype(int).to_numpy()
  frame['cp'] = pd.Categorical(frame['cp'].astype(int), categories=[1, 2, 3, 4])
  frame['restecg'] = pd.Categorical(frame['restecg'].astype(int), categories=[0, 1, 2])
  x = pd.get_dummies(frame, columns=['cp', 'restecg'], drop_first=True).astype(float).to_numpy()
  if flamby:
    stratify = y if np.bincount(y).min() > 2 else None
    train, _ = model_selection.train_test_split(
        np.arange(len(y)), train_size=0.66, test_size=0.34, random_state=43, shuffle=True,
        stratify=stratify)
  else:
    stratify = y if np.bincount(y).min() >= 2 else None
    train, _ = model_selection.train_test_split(np.arange(len(y)), test_size=0.34,
                                                stratify=stratify, random_state=0)
  x_train = x[train]
  std = x_train.std(axis=0)
  return (x_train - x_train.mean(axis=0)) / np.where(std > 0, std, 1), y[train]


def test_hospitals_features_and_split_sizes(heart):
  assert heart.hospitals == HOSPITALS
  assert heart.feature_shape == (13,)
  assert len(heart.feature_names) == 13
  for hospital, (n_train, n_test) in SPLITS.items():
    assert (heart.num_train(hospital), len(heart.test[hospital][1])) == (n_train, n_test)


def test_rows_and_labels_match_raw_files(heart, data_dir):
  for hospital in HOSPITALS:
    raw = _raw(data_dir, hospital)
    assert len(raw) == ROWS_KEPT[hospital]
    y_train, y_test = heart.train_arrays(hospital)[1], heart.test[hospital][1]
    assert len(y_train) + len(y_test) == len(raw)
    assert y_train.sum() + y_test.sum() == (raw['num'] > 0).sum()


def test_train_features_are_zscored_per_hospital(heart, data_dir):
  for hospital in HOSPITALS:
    x, y = heart.train_arrays(hospital)
    x_ref, y_ref = _reference_train(data_dir, hospital)
    np.testing.assert_allclose(x, x_ref, atol=1e-5)
    np.testing.assert_array_equal(y, y_ref)
    varying = x_ref.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1, atol=1e-4)
    assert np.isfinite(heart.test[hospital][0]).all()


def test_flamby_split_is_flambys_own_and_a_node_loads_its_hospital_alone(heart, data_dir):
  flamby = heart_disease.load(data_dir, seed=7, split='flamby')  # The seed does not move it.
  differs = []
  for hospital in HOSPITALS:
    x, y = flamby.train_arrays(hospital)
    x_ref, y_ref = _reference_train(data_dir, hospital, flamby=True)
    np.testing.assert_allclose(x, x_ref, atol=1e-5)
    np.testing.assert_array_equal(y, y_ref)
    differs.append(not np.array_equal(y, heart.train_arrays(hospital)[1]))
    alone = heart_disease.load(data_dir, split='flamby', hospitals=(hospital,))
    np.testing.assert_array_equal(alone.train_arrays(hospital)[0], x)
    np.testing.assert_array_equal(alone.test[hospital][0], flamby.test[hospital][0])
  assert any(differs)
  assert "FLamby's own 66/34 split" in flamby.description
  with pytest.raises(data.DataError, match="data.split='random'"):
    heart_disease.load(data_dir, split='random')


def test_data_dir_can_be_the_heart_disease_folder(data_dir):
  fed = heart_disease.load(os.path.join(data_dir, 'heart_disease'), seed=3)
  assert sum(fed.num_train(h) + len(fed.test[h][1]) for h in HOSPITALS) == 740


def test_config_falls_back_to_environment_variable(data_dir, monkeypatch):
  monkeypatch.setenv('TFF_MED_DATA_DIR', data_dir)
  assert data.DataConfig('heart_disease').resolved_data_dir() == data_dir
  monkeypatch.delenv('TFF_MED_DATA_DIR')
  with pytest.raises(data.DataError, match='data.data_dir=None: .*TFF_MED_DATA_DIR'):
    data.load(data.DataConfig('heart_disease'))


def _corrupt(data_dir, tmp_path, hospital, line, column, value):
  """Copies the four files to tmp_path/heart_disease; sets 1-based (line, column) to value."""
  folder = tmp_path / 'heart_disease'
  shutil.copytree(os.path.join(data_dir, 'heart_disease'), folder)
  path = folder / f'processed.{hospital}.data'
  os.chmod(path, 0o644)
  lines = path.read_text().splitlines()
  fields = lines[line - 1].split(',')
  fields[column - 1] = value
  lines[line - 1] = ','.join(fields)
  path.write_text('\n'.join(lines) + '\n')
  return str(tmp_path), str(path)


@pytest.mark.parametrize('hospital, line, column, value, message', [
    ('hungarian', 7, 5, 'abc', r"line 7, column 5 \(chol\): value 'abc' is not a number"),
    ('cleveland', 2, 1, 'inf', r"line 2, column 1 \(age\): value 'inf' is NaN or infinite"),
    ('va', 4, 14, '7', r"line 4, column 14 \(num\): value '7' is not one of 0, 1, 2, 3, 4"),
    ('switzerland', 3, 3, '5', r"line 3, column 3 \(cp\): value '5' is not one of 1, 2, 3, 4"),
    ('cleveland', 10, 14, '0,1', r'line 10: 15 comma-separated values, expected 14'),
])
def test_bad_value_names_hospital_file_line_and_column(data_dir, tmp_path, hospital, line,
                                                       column, value, message):
  root, path = _corrupt(data_dir, tmp_path, hospital, line, column, value)
  where = rf"hospital '{hospital}', file {re.escape(path)}"
  with pytest.raises(data.DataError, match=f'{where}, {message}'):
    heart_disease.load(root)


def test_missing_file(data_dir, tmp_path):
  root, path = _corrupt(data_dir, tmp_path, 'va', 1, 1, '63')
  os.remove(path)
  where = rf"hospital 'va', file {re.escape(path)}"
  with pytest.raises(data.DataError, match=f'{where}: file not found'):
    heart_disease.load(root)


@pytest.mark.parametrize('text, message', [
    ('', 'no rows'),
    ('63,1,4,?,260,0,1,112,1,3,2,?,?,2\n', "no rows left after dropping rows with a '?'"),
])
def test_file_without_usable_rows(data_dir, tmp_path, text, message):
  root, path = _corrupt(data_dir, tmp_path, 'switzerland', 1, 1, '32')
  with open(path, 'w') as f:
    f.write(text)
  where = rf"hospital 'switzerland', file {re.escape(path)}"
  with pytest.raises(data.DataError, match=f'{where}: {message}'):
    heart_disease.load(root)
