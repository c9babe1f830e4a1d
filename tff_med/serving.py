"""Models a hospital can apply to new patients: a Keras SavedModel whose serving
signature takes named raw columns, with its `FeatureSchema` beside it.

    MODEL_DIR/saved_model.pb, variables/   tf.keras.models.load_model: the Keras
                                           model, model inputs [B, F] -> logits [B, 1]
      signature 'serving_default'          raw columns -> {'probability': [B], 'logit': [B]}
    MODEL_DIR/feature_schema.json          the schema, the signature's input name per
                                           column, and the run's preprocessing record

The signature applies the schema in TensorFlow (numbers in float64, as the
loaders scale them): one-hot levels, clipping, offsets and scales. A value
outside a categorical column's levels, or a NaN or infinite number, fails the
call (tf.debugging asserts); `read_csv` reports such cells with file, line and
column before the model runs.

Where preprocessing is per hospital (statistics of each hospital's own
records), a run exports one model per hospital, MODEL_DIR/HOSPITAL/.
"""

import csv
import json
import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from tff_med.data import csv_tables
from tff_med.data import preprocess
from tff_med.data.errors import DataError
from tff_med.data.schema import FeatureSchema

SCHEMA_FILE = 'feature_schema.json'
_MODEL_FILE = 'saved_model.pb'
_BATCH = 4096  # Rows per call of the signature.


def export(model: tf.keras.Model, schema: FeatureSchema, path: str,
           preprocessing: Mapping) -> None:
  """Saves `model` (inputs [B, F] -> logits [B, 1]) to `path` with a serving
  signature applying `schema`, and writes its feature_schema.json."""
  model.save(path, save_format='tf',
             signatures={'serving_default': _serving_function(model, schema)})
  with open(os.path.join(path, SCHEMA_FILE), 'w') as f:
    json.dump({'schema': schema.to_json(),
               'inputs': {c: schema.input_key(c) for c in schema.columns},
               'preprocessing': dict(preprocessing)}, f, indent=2)
    f.write('\n')


def _dtype(schema: FeatureSchema, column: str) -> tf.DType:
  return tf.string if schema.is_text(column) else tf.float64


def _serving_function(model: tf.keras.Model, schema: FeatureSchema):
  """The concrete function: signature inputs (schema.input_key per column, [B], or
  'c0_image' [B, *image_shape]) -> {'probability', 'logit'} [B]."""
  keys = {schema.input_key(c): c for c in schema.columns}

  @tf.function
  def serve(**inputs):
    columns = {keys[k]: v for k, v in inputs.items()}
    checks = [tf.debugging.assert_all_finite(v, f'column {c}: NaN or infinite value')
              for c, v in columns.items() if v.dtype.is_floating]
    for column, levels in schema.levels.items():
      known = tf.reduce_any(tf.equal(columns[column][:, None],
                                     tf.constant(levels, _dtype(schema, column))[None, :]),
                            axis=1)
      checks.append(tf.debugging.assert_equal(
          tf.reduce_all(known), True,
          message=f'column {column}: a value outside its levels {list(levels)}'))
    with tf.control_dependencies(checks):
      x = _encode(schema, columns)
    logits = model(tf.cast(x, tf.float32), training=False)[:, 0]
    return {'probability': tf.sigmoid(logits), 'logit': logits}

  if schema.image_shape is not None:
    specs = {schema.input_key('image'): tf.TensorSpec([None, *schema.image_shape], tf.float64)}
  else:
    specs = {k: tf.TensorSpec([None], _dtype(schema, c)) for k, c in keys.items()}
  return serve.get_concrete_function(**specs)


def _encode(schema: FeatureSchema, columns: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """`FeatureSchema.encode` in TensorFlow: [B, F] float64 (images: [B, *shape])."""
  if schema.image_shape is not None:
    feature = schema.features[0]
    return (columns['image'] - feature.offset) / feature.scale
  raw = [columns[f.column] if f.level is None
         else tf.cast(tf.equal(columns[f.column],
                               tf.constant(f.level, _dtype(schema, f.column))), tf.float64)
         for f in schema.features]
  bounds = {field: tf.constant([getattr(f, field) for f in schema.features], tf.float64)
            for field in ('low', 'high', 'offset', 'scale')}
  x = tf.clip_by_value(tf.stack(raw, axis=1), bounds['low'], bounds['high'])
  return (x - bounds['offset']) / bounds['scale']


class ServingModel:
  """An exported model: `schema`, `preprocessing`, and `predict` on raw columns."""

  def __init__(self, model_dir: str):
    """Raises ValueError naming `model_dir` when it holds no exported model (listing
    the per-hospital models when it holds those)."""
    if not os.path.isfile(os.path.join(model_dir, _MODEL_FILE)):
      hospitals = hospital_models(model_dir)
      if hospitals:
        raise ValueError(f'model_dir={model_dir}: holds one model per hospital (preprocessing '
                         'with each hospital\'s own statistics); give '
                         f'{os.path.join(model_dir, "HOSPITAL")} for one of '
                         f'{", ".join(hospitals)}')
      raise ValueError(f'model_dir={model_dir}: no saved_model.pb, not an exported model')
    schema_path = os.path.join(model_dir, SCHEMA_FILE)
    if not os.path.isfile(schema_path):
      raise ValueError(f'model_dir={model_dir}: no {SCHEMA_FILE}; the model was not exported '
                       'by tff_med.serving (re-run the training to export it)')
    with open(schema_path) as f:
      saved = json.load(f)
    self.model_dir = model_dir
    self.schema = FeatureSchema.from_json(saved['schema'])
    self.preprocessing = saved['preprocessing']
    self._signature = tf.saved_model.load(model_dir).signatures['serving_default']

  def predict(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Probabilities [N] for raw `columns` (column -> values [N]; 'image' -> [N, *shape])."""
    n = len(next(iter(columns.values())))
    out = []
    for start in range(0, n, _BATCH):
      inputs = {self.schema.input_key(c): tf.constant(
          np.asarray(columns[c][start:start + _BATCH]),
          _dtype(self.schema, c) if c != 'image' else tf.float64)
                for c in self.schema.columns}
      out.append(self._signature(**inputs)['probability'].numpy())
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def hospital_models(model_dir: str) -> list[str]:
  """Names of the per-hospital models under `model_dir` (sorted; [] when none)."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(d for d in os.listdir(model_dir)
                if os.path.isfile(os.path.join(model_dir, d, _MODEL_FILE)))


def keras_model_path(model_dir: str) -> str:
  """The folder of the Keras model in `model_dir`: itself, or for per-hospital
  exports of one global model, its first hospital's copy."""
  if os.path.isfile(os.path.join(model_dir, _MODEL_FILE)):
    return model_dir
  hospitals = hospital_models(model_dir)
  if not hospitals:
    raise ValueError(f'{model_dir}: no exported model')
  return os.path.join(model_dir, hospitals[0])


def read_csv(path: str, schema: FeatureSchema, encoding: str = 'utf-8'
             ) -> tuple[dict[str, np.ndarray], csv_tables.Table]:
  """Raw columns of the CSV file `path` that `schema` needs, validated as training
  validates its files (encoding, BOM, delimiter, missing cells, numbers), and the
  table as read (its header and rows, for line numbers and ID columns).

  Raises:
    DataError: one line naming the file, line and column: a column the model
      needs is absent, a cell is missing, a number does not parse, or a
      categorical value is not one of the levels the model was trained with.
  """
  if schema.image_shape is not None:
    raise DataError(f'file {path}: the model takes images {schema.image_shape}, not table '
                    'rows')
  name = os.path.splitext(os.path.basename(path))[0]
  table = csv_tables.read_table(name, path, encoding)
  absent = [c for c in schema.columns if c not in table.header]
  if absent:
    raise DataError(f'{preprocess.location(name, path)}: column(s) {", ".join(map(repr, absent))}'
                    f' missing; the model reads {", ".join(schema.columns)}')
  csv_tables.check_missing({name: table}, list(schema.columns), 'error')
  columns = {}
  for column in schema.columns:
    levels = schema.levels.get(column)
    values = [text if schema.is_text(column)
              else csv_tables.parse_number(text, table.delimiter, where)
              for where, text in table.cells(column)]
    if levels is not None:
      for (where, text), value in zip(table.cells(column), values):
        if value not in levels:
          raise DataError(f'{where}: value {text!r} was not seen in training; the model knows '
                          f'{", ".join(map(repr, levels))}')
    columns[column] = np.array(values, dtype=object if schema.is_text(column) else np.float64)
  return columns, table


def write_scores(path: str, table: csv_tables.Table, id_columns: list[str],
                 probabilities: np.ndarray) -> None:
  """One CSV row per input row: its line in the input file, its `id_columns`, and
  the probability of the positive class."""
  indices = [table.header.index(c) for c in id_columns]
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['line', *id_columns, 'probability'])
    for (line, fields), p in zip(table.rows, probabilities):
      writer.writerow([line, *(fields[i] for i in indices), f'{p:.6f}'])
