"""`FederatedData`: per-hospital training ClientData plus per-hospital test sets.

Every dataset in `tff_med.data` returns one of these. Examples are binary
classification records: `x` float32 of shape `feature_shape` (13 for a
13-feature table, (28, 28, 1) for MedMNIST images), `y` float32 of shape (1,)
holding 0.0 (no disease) or 1.0 (disease).
"""

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.data import schema as schema_lib
from tff_med.data.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # (x [N, *feature_shape] float32, y [N] int64 in {0, 1})

# `preprocessing` of arrays a caller passes in: tff_med.data transformed nothing.
AS_GIVEN = {'scaling': 'as_given', 'data_dependent': False,
            'source': 'arrays used as passed to FederatedData.from_arrays; the caller '
                      'answers for how they were made'}


def _check_split(hospital: str, split: str, x: np.ndarray, y: np.ndarray,
                 feature_shape: tuple[int, ...] | None) -> None:
  if len(x) == 0:
    raise DataError(f'hospital {hospital!r}: no {split} rows')
  if len(x) != len(y):
    raise DataError(f'hospital {hospital!r}: {split} has {len(x)} feature rows '
                    f'but {len(y)} labels')
  if feature_shape is not None and tuple(x.shape[1:]) != feature_shape:
    raise DataError(f'hospital {hospital!r}: {split} features have shape '
                    f'{tuple(x.shape[1:])}, other hospitals have {feature_shape}')
  bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  if bad.any():
    raise DataError(f'hospital {hospital!r}: {split} row {int(np.argmax(bad))} '
                    'has a NaN or infinite feature')
  labels = set(np.unique(y).tolist())
  if not labels <= {0, 1}:
    raise DataError(f'hospital {hospital!r}: {split} labels {sorted(labels - {0, 1})} '
                    'are outside the classes {0, 1}')


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """Hospitals' data for one study.

  Attributes:
    name: dataset name, e.g. 'heart_disease'.
    hospitals: hospital names, in a fixed order.
    train: per-hospital training records as a `tff.simulation.datasets.ClientData`
      keyed by hospital name; elements `OrderedDict(x=float32[feature_shape],
      y=float32[1])`.
    test: hospital name -> (x [N, *feature_shape] float32, y [N] int64).
    train_sizes: hospital name -> number of training records.
    feature_names: column names for tables, None for images.
    description: one line on how the hospitals were formed.
    preprocessing: how features were scaled: 'scaling' (a DataConfig.scaling
      name, 'pixels/255' for images, 'as_given' for caller arrays),
      'data_dependent' (True when a transformation of the model's inputs used
      statistics of the records, which a DP guarantee does not cover) and
      'source' (one line: where the ranges or statistics came from).
    random_split: whether each hospital's training and test records were drawn
      at random from one pool (False for MedMNIST's official train/test sets),
      which a membership audit's statistical bound needs.
    schemas: hospital name -> the `schema.FeatureSchema` that turns its raw
      columns into the model's input (equal for every hospital unless
      preprocessing is per hospital).
  """
  name: str
  hospitals: tuple[str, ...]
  train: tff.simulation.datasets.ClientData
  test: Mapping[str, Arrays]
  train_sizes: Mapping[str, int]
  feature_names: tuple[str, ...] | None = None
  description: str = ''
  preprocessing: Mapping[str, str | bool] = dataclasses.field(
      default_factory=lambda: dict(AS_GIVEN))
  random_split: bool = True
  schemas: Mapping[str, schema_lib.FeatureSchema] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_arrays(cls, name: str, train: Mapping[str, Arrays], test: Mapping[str, Arrays],
                  feature_names: Sequence[str] | None = None, description: str = '',
                  preprocessing: Mapping[str, str | bool] | None = None,
                  random_split: bool = True,
                  schemas: Mapping[str, schema_lib.FeatureSchema] | None = None
                  ) -> 'FederatedData':
    """Validates per-hospital arrays and builds the ClientData.

    `schemas`: hospital -> FeatureSchema; None: the features as given
    (`schema.identity_schema`).

    Raises:
      DataError: naming the hospital, for an empty split, NaN/inf features,
        labels outside {0, 1} or feature shapes that differ between hospitals.
    """
    if set(train) != set(test):
      raise DataError(f'hospitals with training data {sorted(train)} differ from '
                      f'hospitals with test data {sorted(test)}')
    if not train:
      raise DataError('no hospitals')
    hospitals = tuple(train)
    feature_shape = None
    slices = collections.OrderedDict()
    test_arrays = collections.OrderedDict()
    for hospital in hospitals:
      for split, (x, y) in (('train', train[hospital]), ('test', test[hospital])):
        x = np.asarray(x, np.float32)
        y = np.asarray(y).reshape(-1)
        _check_split(hospital, split, x, y, feature_shape)
        feature_shape = tuple(x.shape[1:])
        if split == 'train':
          slices[hospital] = collections.OrderedDict(
              x=x, y=y.astype(np.float32).reshape(-1, 1))
        else:
          test_arrays[hospital] = (x, y.astype(np.int64))
    for hospital, schema in (schemas or {}).items():
      if schema.image_shape is None and len(schema.features) != np.prod(feature_shape):
        raise DataError(f'hospital {hospital!r}: schema has {len(schema.features)} features, '
                        f'the arrays {feature_shape}')
    if schemas and set(schemas) != set(hospitals):
      raise DataError(f'schemas for hospitals {sorted(schemas)}, data for {sorted(hospitals)}')
    return cls(name=name, hospitals=hospitals,
               train=tff.simulation.datasets.TestClientData(slices),
               test=test_arrays,
               train_sizes={h: len(slices[h]['y']) for h in hospitals},
               feature_names=tuple(feature_names) if feature_names else None,
               description=description, preprocessing=dict(preprocessing or AS_GIVEN),
               random_split=random_split,
               schemas=dict(schemas) if schemas else {
                   h: schema_lib.identity_schema(feature_shape, feature_names,
                                                 (preprocessing or AS_GIVEN)['source'])
                   for h in hospitals})

  @classmethod
  def from_client_data(cls, name: str, train: tff.simulation.datasets.ClientData,
                       test: Mapping[str, Arrays], **kwargs) -> 'FederatedData':
    """Wraps a user's own ClientData (elements `OrderedDict(x=..., y=...)`)."""
    return cls.from_arrays(name, {h: _dataset_arrays(train.create_tf_dataset_for_client(h))
                                  for h in train.client_ids}, test, **kwargs)

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.test[self.hospitals[0]][0].shape[1:])

  @property
  def element_spec(self):
    return self.train.element_type_structure

  def train_arrays(self, hospital: str) -> Arrays:
    """Hospital's training records as numpy (x float32, y int64 [N])."""
    return _dataset_arrays(self.train.create_tf_dataset_for_client(hospital))

  def num_train(self, hospital: str) -> int:
    return self.train_sizes[hospital]

  def num_test(self, hospital: str) -> int:
    return len(self.test[hospital][1])

  def digest_records(self, digest, hospital: str):
    """`digest` (a hashlib or hmac object) updated with `hospital`'s train and
    test arrays; returns it."""
    for array in (*self.train_arrays(hospital), *self.test[hospital]):
      digest.update(np.ascontiguousarray(array).tobytes())
    return digest

  def pooled(self, split: str) -> Arrays:
    """All hospitals' `split` ('train' or 'test') records concatenated."""
    parts = [self.train_arrays(h) if split == 'train' else self.test[h]
             for h in self.hospitals]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _dataset_arrays(dataset: tf.data.Dataset) -> Arrays:
  batch = next(iter(dataset.batch(2**31 - 1)))
  return (np.asarray(batch['x'], np.float32),
          np.asarray(batch['y']).reshape(-1).astype(np.int64))
