"""Exported models score raw rows as training scored them: the serving signature
applied to raw CSV rows equals the Keras model on the loader's preprocessed rows;
bad rows fail with file, line and column; per-hospital preprocessing exports one
model per hospital; a schema under public ranges holds no statistic of the records."""

import csv
import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tff_med import data as data_lib
from tff_med import serving, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.config import TrainConfig
from tff_med.data import DataError, heart_disease, preprocess, schema
from tff_med.models import ModelConfig, build_keras_model

_CONFIG = TrainConfig(AlgorithmConfig('fedavg', client_lr=0.05), rounds=2, batch_size=8,
                      eval_every=2)


def _train(data, output_dir, model='logreg'):
  config = ModelConfig(model, hidden_units=(8,)) if model == 'mlp' else ModelConfig(model)
  keras_model_fn = functools.partial(build_keras_model, config, data.feature_shape, 0)
  training.run(data, keras_model_fn, _CONFIG, output_dir=str(output_dir), log=lambda _: None)


def _test_rows(rows, labels, test_fraction, seed):
  """The raw `rows` that the loaders' split puts in the test set, in its order."""
  index = np.arange(len(labels))[:, None]
  (_, _), (test, _) = preprocess.split_train_test('rows', index, labels, test_fraction, seed)
  return [rows[i] for i in test[:, 0]]


def _expected(model_dir, x):
  model = tf.keras.models.load_model(model_dir, compile=False)
  return tf.sigmoid(model(x)).numpy()[:, 0]


@pytest.fixture(scope='module')
def heart_run(data_dir, tmp_path_factory):
  """heart_disease, FLamby's per-hospital z-scores: one exported model per hospital."""
  data = data_lib.load(data_lib.DataConfig('heart_disease', data_dir=data_dir))
  out = tmp_path_factory.mktemp('heart')
  _train(data, out)
  return data, out


def _heart_csv(data_dir, hospital, path):
  """The hospital's raw test rows (its file's lines, header added) as a CSV file."""
  source = os.path.join(data_dir, 'heart_disease', f'processed.{hospital}.data')
  lines = [l.strip() for l in open(source) if l.strip()]
  kept = [l for n, l in enumerate(lines, 1)
          if heart_disease._parse_row(hospital, source, n, l.split(','))]  # pylint: disable=protected-access
  labels = np.array([int(float(l.split(',')[-1]) > 0) for l in kept])
  rows = _test_rows(kept, labels, heart_disease.TEST_FRACTION, 0)
  path.write_text(','.join(heart_disease.COLUMNS) + '\n' + '\n'.join(rows) + '\n')
  return str(path)


def test_each_heart_hospital_model_scores_raw_rows_as_training_did(heart_run, data_dir,
                                                                   tmp_path):
  data, out = heart_run
  assert serving.hospital_models(out / 'saved_model') == sorted(data.hospitals)
  assert not (out / 'saved_model' / 'saved_model.pb').exists()
  for hospital in data.hospitals:
    model = serving.ServingModel(str(out / 'saved_model' / hospital))
    assert model.schema.hospital == hospital and model.schema.data_dependent
    columns, table = serving.read_csv(_heart_csv(data_dir, hospital, tmp_path / 'new.csv'),
                                      model.schema)
    assert len(table.rows) == len(data.test[hospital][1])
    want = _expected(out / 'saved_model' / hospital, data.test[hospital][0])
    np.testing.assert_allclose(model.predict(columns), want, atol=1e-6)
  # Another hospital's statistics score the last hospital's rows differently.
  other = serving.ServingModel(str(out / 'saved_model' / data.hospitals[0]))
  assert np.abs(other.predict(columns) - want).max() > 1e-3


def test_predict_binary_writes_one_probability_per_row(heart_run, data_dir, tmp_path):
  data, out = heart_run
  new = _heart_csv(data_dir, 'cleveland', tmp_path / 'new.csv')
  scores = tmp_path / 'scores.csv'
  result = _predict(f'--model_dir={out}/saved_model/cleveland', f'--csv={new}',
                    f'--output={scores}')
  assert result.returncode == 0, result.stderr[-2000:]
  rows = list(csv.DictReader(open(scores)))
  assert [r['line'] for r in rows] == [str(n) for n in range(2, len(rows) + 2)]
  np.testing.assert_allclose(
      [float(r['probability']) for r in rows],
      _expected(out / 'saved_model' / 'cleveland', data.test['cleveland'][0]), atol=1e-6)
  assert "cleveland's statistics" in result.stdout


@pytest.mark.parametrize('args,message', [
    (['--model_dir={out}/saved_model'], 'holds one model per hospital'),
    (['--model_dir={out}/saved_model/cleveland', '--output={tmp}'], 'is a directory'),
    (['--model_dir={out}/nothing'], 'no saved_model.pb'),
])
def test_predict_binary_errors_are_one_line(heart_run, data_dir, tmp_path, args, message):
  _, out = heart_run
  new = _heart_csv(data_dir, 'cleveland', tmp_path / 'new.csv')
  args = [a.format(out=out, tmp=tmp_path) for a in args]
  result = _predict(f'--csv={new}', f'--output={tmp_path / "s.csv"}', *args)
  assert result.returncode != 0
  assert result.stderr.startswith('error: ') and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _predict(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.predict', *args],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _messy_rows(seed, n=40):
  """Raw rows: record_id, age, sex (text), smoker (text), outcome ('died'/'survived')."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    age, smoker = rng.normal(62, 12), rng.choice(['never', 'former', 'current'])
    risk = (age - 62) / 12 + (smoker == 'current')
    rows.append([f'H{seed}-{i:03d}', f'{age:.1f}', rng.choice(['F', 'M']), smoker,
                 'died' if risk + rng.normal() > 0.5 else 'survived'])
  return rows


@pytest.fixture(scope='module')
def csv_run(tmp_path_factory):
  """Two hospitals' messy CSVs (text columns, string label, ID column, a ';'
  export with a BOM), public ranges: one exported model for both."""
  folder = tmp_path_factory.mktemp('csv')
  raw = {'north': _messy_rows(0), 'south': _messy_rows(1)}
  header = ['record_id', 'age', 'sex', 'smoker', 'outcome']
  (folder / 'north.csv').write_text('\n'.join(','.join(r) for r in [header] + raw['north']))
  (folder / 'south.csv').write_bytes(('\ufeff' + '\n'.join(
      ';'.join(c.replace('.', ',') for c in r) for r in [header] + raw['south'])).encode())
  data = data_lib.load(data_lib.DataConfig(
      'csv', csv_files=(str(folder / 'north.csv'), str(folder / 'south.csv')),
      label_column='outcome', positive_label='died', categorical_columns=('sex', 'smoker'),
      scaling='public_ranges', feature_ranges=(('age', 18, 100),)))
  out = folder / 'run'
  _train(data, out, model='mlp')
  return data, out, raw, header


def test_csv_model_scores_raw_rows_as_training_did(csv_run, tmp_path):
  data, out, raw, header = csv_run
  model = serving.ServingModel(str(out / 'saved_model'))
  assert model.schema.hospital is None and model.schema.id_columns == ('record_id',)
  assert model.schema.levels == {'sex': ('F', 'M'), 'smoker': ('current', 'former', 'never')}
  for hospital in data.hospitals:
    labels = np.array([int(r[-1] == 'died') for r in raw[hospital]])
    rows = _test_rows(raw[hospital], labels, 0.34, 0)
    path = tmp_path / f'{hospital}_new.csv'
    path.write_text('\n'.join(','.join(r) for r in [header[:-1]] + [r[:-1] for r in rows]))
    columns, table = serving.read_csv(str(path), model.schema)
    np.testing.assert_allclose(model.predict(columns),
                               _expected(out / 'saved_model', data.test[hospital][0]), atol=1e-6)
    scores = tmp_path / 'scores.csv'
    serving.write_scores(str(scores), table, ['record_id'], model.predict(columns))
    assert [r['record_id'] for r in csv.DictReader(open(scores))] == [r[0] for r in rows]


@pytest.mark.parametrize('edit,message', [
    (lambda r: r[:2] + ['X'] + r[3:], "line 3 (data row 2), column 'sex': value 'X' was not "
                                      "seen in training; the model knows 'F', 'M'"),
    (lambda r: r[:1] + ['NA'] + r[2:], "line 3 (data row 2), column 'age': missing value 'NA'"),
    (lambda r: r[:1] + ['sixty'] + r[2:], "line 3 (data row 2), column 'age': value 'sixty' "
                                          'is not a number'),
])
def test_bad_cell_is_named_before_the_model_runs(csv_run, tmp_path, edit, message):
  _, out, raw, header = csv_run
  rows = [r[:-1] for r in raw['north'][:3]]
  rows[1] = edit(rows[1])
  path = tmp_path / 'new.csv'
  path.write_text('\n'.join(','.join(r) for r in [header[:-1]] + rows))
  with pytest.raises(DataError, match=f"file {path}, {message}".replace('(', r'\(')
                     .replace(')', r'\)')):
    serving.read_csv(str(path), serving.ServingModel(str(out / 'saved_model')).schema)


def test_missing_column_is_named(csv_run, tmp_path):
  _, out, raw, header = csv_run
  path = tmp_path / 'new.csv'
  path.write_text('\n'.join(','.join(r[:3] + r[4:]) for r in [header] + raw['north'][:3]))
  with pytest.raises(DataError, match=r"column\(s\) 'smoker' missing; the model reads "
                                      'age, sex, smoker'):
    serving.read_csv(str(path), serving.ServingModel(str(out / 'saved_model')).schema)


def test_the_signature_itself_refuses_an_unseen_level(csv_run):
  """A caller bypassing read_csv (TF Serving, saved_model_cli) gets an error, not a
  silent all-zero one-hot."""
  _, out, _, _ = csv_run
  model = serving.ServingModel(str(out / 'saved_model'))
  good = {'age': np.array([50.0]), 'sex': np.array(['F'], object),
          'smoker': np.array(['never'], object)}
  assert 0 < model.predict(good)[0] < 1
  with pytest.raises(tf.errors.InvalidArgumentError, match='column smoker: a value outside its levels'):
    model.predict({**good, 'smoker': np.array(['sometimes'], object)})
  with pytest.raises(tf.errors.InvalidArgumentError, match='column age: NaN or infinite'):
    model.predict({**good, 'age': np.array([np.nan])})


def _numeric_files(folder, change_one):
  rng = np.random.default_rng(0)
  rows = [[f'{rng.normal(60, 10):.1f}', f'{rng.normal(130, 15):.1f}', str(i % 2)]
          for i in range(30)]
  if change_one:
    rows[4] = ['99.0', '210.0', '1']
  folder.mkdir()
  (folder / 'a.csv').write_text('\n'.join(','.join(r) for r in [['age', 'bp', 'y']] + rows))
  return (str(folder / 'a.csv'),)


@pytest.mark.parametrize('scaling,equal', [('public_ranges', True), ('zscore', False)])
def test_schema_under_public_ranges_holds_no_statistic_of_the_records(tmp_path, scaling,
                                                                      equal):
  """Neighbouring datasets (one record changed) export the same schema under public
  ranges; under z-scores they do not, and the schema says it is data-dependent."""
  schemas = []
  for change_one in (False, True):
    config = data_lib.DataConfig(
        'csv', csv_files=_numeric_files(tmp_path / str(change_one), change_one),
        label_column='y', scaling=scaling,
        feature_ranges=(('age', 18, 100), ('bp', 50, 250)) if equal else ())
    schemas.append(data_lib.load(config).schemas['a'])
  assert (schemas[0] == schemas[1]) is equal
  assert schemas[0].data_dependent is not equal


def test_image_model_takes_pixels(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(6, 28, 28, 1)).astype(np.float64)
  data = data_lib.FederatedData.from_arrays(
      'img', {'a': (x / 255, np.arange(6) % 2)}, {'a': (x / 255, np.arange(6) % 2)},
      schemas={'a': schema.FeatureSchema(
          (schema.Feature('image', 'image', scale=255.0),), image_shape=(28, 28, 1))})
  model = build_keras_model(ModelConfig('cnn'), data.feature_shape, 0)
  serving.export(model, data.schemas['a'], str(tmp_path / 'm'), data.preprocessing)
  served = serving.ServingModel(str(tmp_path / 'm'))
  np.testing.assert_allclose(served.predict({'image': x}),
                             tf.sigmoid(model(x / 255)).numpy()[:, 0], atol=1e-6)
  with pytest.raises(DataError, match='takes images'):
    serving.read_csv(str(tmp_path / 'any.csv'), served.schema)
