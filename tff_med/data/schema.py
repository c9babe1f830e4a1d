"""`FeatureSchema`: how a hospital's raw columns become the model's input.

A table's model input is a float vector [F]. Feature i is read from raw column
`features[i].column`: its number, or, with a `level`, 1.0 where the column
equals that level and 0.0 elsewhere (one-hot); then clipped to [low, high] and
mapped to (value - offset) / scale. The loaders scale their training arrays
with the same numbers (`preprocess.apply_transform`), and the exported model
(`tff_med.serving`) applies this schema in TensorFlow, so a raw row scored by
the exported model gives what training fed the model for that row.

An image schema (`image_shape` set) takes pixel values [*image_shape] and
divides them by `features[0].scale`.

`statistics` says where offsets, scales and levels came from (declared public
ranges, or the records of `hospital`, or of all hospitals pooled); a schema
with statistics of the records releases them with the model.
"""

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

Level = str | float  # A categorical value: text in CSV files, a number in coded tables.


@dataclasses.dataclass(frozen=True)
class Feature:
  """One model input: raw `column` (one-hot where `level` is set), clipped to
  [low, high], minus `offset`, divided by `scale` (the column's units)."""
  name: str
  column: str
  level: Level | None = None
  low: float = -math.inf
  high: float = math.inf
  offset: float = 0.0
  scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
  """The raw columns a model takes and how they become its input.

  Attributes:
    features: the model's inputs, in order.
    levels: categorical column -> every value it may hold (a level without a
      feature, like a dropped first level, encodes as all zeros).
    statistics: one line: where offsets, scales and levels came from.
    data_dependent: whether they are statistics of the records.
    hospital: the hospital whose records gave the statistics; None when every
      hospital shares the schema.
    label, positive_label, id_columns: the training table's label column, the
      label value that meant 1 (None: 0/1) and record-identifier columns; for
      the reader, the model takes none of them.
    image_shape: images only: the input's shape.
  """
  features: tuple[Feature, ...]
  levels: Mapping[str, tuple[Level, ...]] = dataclasses.field(default_factory=dict)
  statistics: str = ''
  data_dependent: bool = False
  hospital: str | None = None
  label: str | None = None
  positive_label: str | None = None
  id_columns: tuple[str, ...] = ()
  image_shape: tuple[int, ...] | None = None

  @property
  def columns(self) -> tuple[str, ...]:
    """The raw columns the model reads, in order of first use."""
    return tuple(dict.fromkeys(f.column for f in self.features))

  def is_text(self, column: str) -> bool:
    """Whether `column` holds text levels (else numbers)."""
    return any(isinstance(level, str) for level in self.levels.get(column, ()))

  def input_key(self, column: str) -> str:
    """`column` as a SavedModel signature input name ([A-Za-z0-9_.-/] only)."""
    return f'c{self.columns.index(column)}_' + re.sub(r'[^A-Za-z0-9_.\-/]', '_', column)

  def encode(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Raw `columns` (name -> values [N]) as model inputs [N, F], float64."""
    raw = [np.asarray(columns[f.column], np.float64) if f.level is None
           else (np.asarray(columns[f.column]) == f.level).astype(np.float64)
           for f in self.features]
    return (np.clip(np.stack(raw, axis=1), self._bounds('low'), self._bounds('high'))
            - self._bounds('offset')) / self._bounds('scale')

  def _bounds(self, field: str) -> np.ndarray:
    return np.array([getattr(f, field) for f in self.features], np.float64)

  def to_json(self) -> dict:
    value = dataclasses.asdict(self)
    value['features'] = [{k: _json_number(v) for k, v in f.items()} for f in value['features']]
    value['levels'] = {c: list(levels) for c, levels in self.levels.items()}
    return value

  @classmethod
  def from_json(cls, value: Mapping) -> 'FeatureSchema':
    features = tuple(Feature(**{k: float(v) if k in ('low', 'high', 'offset', 'scale') else v
                                for k, v in f.items()}) for f in value['features'])
    return cls(**{**value, 'features': features,
                  'levels': {c: tuple(levels) for c, levels in value['levels'].items()},
                  'id_columns': tuple(value['id_columns']),
                  'image_shape': (tuple(value['image_shape'])
                                  if value['image_shape'] is not None else None)})

  def dumps(self) -> str:
    return json.dumps(self.to_json(), indent=2)


def _json_number(value):
  """+-inf as the strings JSON allows ('inf', '-inf'); float('inf') reads them back."""
  if isinstance(value, float) and math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  return value


def table_schemas(features: Sequence[Feature], transforms: Mapping[str, np.ndarray],
                  statistics: str, data_dependent: bool, per_hospital: bool,
                  **fields) -> dict[str, FeatureSchema]:
  """Hospital -> schema: `features` (name, column, level) with each hospital's
  transform [F, 4] (low, high, offset, scale; `preprocess.fit_transform`).

  `per_hospital`: the transforms are the hospitals' own (the schema names its
  hospital); else they are one shared transform. `fields`: other FeatureSchema
  fields (levels, label, ...).
  """
  return {hospital: FeatureSchema(
      features=tuple(dataclasses.replace(f, low=float(t[0]), high=float(t[1]),
                                         offset=float(t[2]), scale=float(t[3]))
                     for f, t in zip(features, transform)),
      statistics=statistics, data_dependent=data_dependent,
      hospital=hospital if per_hospital else None, **fields)
          for hospital, transform in transforms.items()}


def identity_schema(feature_shape: tuple[int, ...], feature_names: Sequence[str] | None,
                    statistics: str) -> FeatureSchema:
  """The schema of features used as given: one numeric column per feature
  (named by `feature_names`, else x0, x1, ...), or an image of `feature_shape`."""
  if len(feature_shape) > 1:
    return FeatureSchema((Feature('image', 'image'),), statistics=statistics,
                         image_shape=tuple(feature_shape))
  names = feature_names or [f'x{i}' for i in range(feature_shape[0])]
  return FeatureSchema(tuple(Feature(n, n) for n in names), statistics=statistics)
