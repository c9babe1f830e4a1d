"""`NodeData`: the coordinator's `FederatedData` for hospitals served by nodes,
built from their manifests (`records.manifest`) alone: it holds no record."""

import collections
import dataclasses
from collections.abc import Mapping

import numpy as np
import tensorflow_federated as tff

from tff_med.data import schema as schema_lib
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData


MAX_FEATURES = 10_000_000  # Values per record a manifest may declare.
_FIELDS = {'dataset': str, 'hospital': str, 'feature_shape': list,
           'feature_names': (list, type(None)), 'train_rows': int, 'test_rows': int,
           'description': str, 'preprocessing': dict, 'random_split': bool, 'schema': dict,
           'records_sha256': str}


def check_manifest(hospital: str, manifest) -> None:
  """DataError naming `hospital` and the field where its node's manifest is not
  what `records.manifest` writes (a node is not trusted to be well-formed)."""
  if not isinstance(manifest, dict):
    raise DataError(f'hospital {hospital}: its manifest is not a JSON object')
  for field, kind in _FIELDS.items():
    value = manifest.get(field)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise DataError(f'hospital {hospital}: manifest field {field!r} is {value!r}')
  shape = manifest['feature_shape']
  if (not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in shape) or np.prod(shape, dtype=np.float64) > MAX_FEATURES):
    raise DataError(f'hospital {hospital}: manifest feature_shape {shape} is not 1 to '
                    f'{MAX_FEATURES:,} positive sizes')
  for field in ('train_rows', 'test_rows'):
    if manifest[field] < 1:
      raise DataError(f'hospital {hospital}: manifest {field} {manifest[field]} is not positive')
  try:
    bytes.fromhex(manifest['records_sha256'])
    schema_lib.FeatureSchema.from_json(manifest['schema'])
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f'hospital {hospital}: manifest records_sha256 or schema is malformed '
                    f'({e!r})') from None


@dataclasses.dataclass(frozen=True)
class NodeData(FederatedData):
  """Hospitals' sizes, shapes, preprocessing and schemas as their nodes declare
  them; `train` and `test` are empty (with the records' element type), so that
  anything that would read a record here finds none. `manifests`: hospital ->
  its manifest."""
  manifests: Mapping[str, dict] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_manifests(cls, manifests: Mapping[str, dict]) -> 'NodeData':
    """DataError naming the hospital whose manifest is malformed (`check_manifest`)
    or whose node serves another hospital, another data set, or another feature
    shape or preprocessing than the first node."""
    for hospital, m in manifests.items():
      check_manifest(hospital, m)
    first = next(iter(manifests.values()))
    for hospital, m in manifests.items():
      if m['hospital'] != hospital:
        raise DataError(f'hospital {hospital}: its node serves the records of '
                        f'{m["hospital"]!r}')
      for field in ('dataset', 'feature_shape', 'preprocessing'):
        if m[field] != first[field]:
          raise DataError(f'hospital {hospital}: its node serves {field} {m[field]!r}, the '
                          f'node of {first["hospital"]} {first[field]!r}')
    shape = tuple(first['feature_shape'])
    empty_x = np.zeros((0, *shape), np.float32)
    descriptions = sorted({m['description'] for m in manifests.values()})
    return cls(
        name=first['dataset'], hospitals=tuple(manifests),
        train=tff.simulation.datasets.TestClientData({
            h: collections.OrderedDict(x=empty_x, y=np.zeros((0, 1), np.float32))
            for h in manifests}),
        test={h: (empty_x, np.zeros((0,), np.int64)) for h in manifests},
        train_sizes={h: m['train_rows'] for h, m in manifests.items()},
        feature_names=tuple(first['feature_names']) if first['feature_names'] else None,
        description=f'{len(manifests)} hospital nodes; ' + '; '.join(descriptions),
        preprocessing=first['preprocessing'],
        random_split=all(m['random_split'] for m in manifests.values()),
        schemas={h: schema_lib.FeatureSchema.from_json(m['schema'])
                 for h, m in manifests.items()},
        manifests=dict(manifests))

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.manifests[self.hospitals[0]]['feature_shape'])

  def num_test(self, hospital: str) -> int:
    return self.manifests[hospital]['test_rows']

  def digest_records(self, digest, hospital: str):
    """`digest` updated with the node's sha256 of its records."""
    digest.update(bytes.fromhex(self.manifests[hospital]['records_sha256']))
    return digest
