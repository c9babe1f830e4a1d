"""MedMNIST BreastMNIST / PneumoniaMNIST split into simulated hospitals.

Reads the standard MedMNIST file NAME.npz: `train_images` (N, 28, 28) uint8
pixels 0..255 and `train_labels` (N, 1) or (N,), same for `test_`. The `val_`
arrays are not used. The official train and test sets are the pools that
`partition.simulate_hospitals` divides into hospitals ('profiles' shifts image
brightness). Images become float32 (28, 28, 1) in [0, 1] (pixel / 255), a
fixed map whatever DataConfig.scaling says: no statistics of the records.
Labels: 1 = disease. PneumoniaMNIST already has 1 = pneumonia; BreastMNIST
has 0 = malignant, so it is flipped to 1 = malignant.
"""

import os
import zipfile

import numpy as np

from tff_med.data import preprocess
from tff_med.data import schema
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData
from tff_med.data.partition import simulate_hospitals

NAMES = ('breastmnist', 'pneumoniamnist')
IMAGE_SHAPE = (28, 28)
# The profiles partition's brightness shift unit, in pixel / 255 units:
# declared (about one std of an ultrasound or X-ray image), not measured.
BRIGHTNESS_SHIFT_UNIT = 0.25
FLIPPED_LABELS = ('breastmnist',)  # files whose label 0 is the disease
_SOURCE = 'the fixed 8-bit pixel range 0..255, no statistics of the records'


def load(data_dir: str, name: str, num_hospitals: int = 3, partition: str = 'profiles',
         seed: int = 0, dirichlet_alpha: float = 0.5) -> FederatedData:
  """Loads `data_dir`/medmnist/NAME.npz (or `data_dir`/NAME.npz) into simulated hospitals.

  Raises:
    DataError: naming the file and key/row for a missing or unreadable file,
      a missing key, images not shaped (N, 28, 28), a label count different
      from the image count, a label outside {0, 1}, or NaN/inf in a float
      array; also for a partition that leaves a hospital too few records.
  """
  if name not in NAMES:
    raise DataError(f'unknown MedMNIST data set {name!r}; choose one of {", ".join(NAMES)}')
  path = os.path.join(preprocess.resolve_dir(data_dir, 'medmnist'), f'{name}.npz')
  pools = read_npz(path)
  if name in FLIPPED_LABELS:
    pools = {split: (x, 1 - y) for split, (x, y) in pools.items()}
  _, train, test, description = simulate_hospitals(
      pools['train'], pools['test'], num_hospitals, partition, seed, dirichlet_alpha,
      profile_features=None, shift_unit=BRIGHTNESS_SHIFT_UNIT)
  return FederatedData.from_arrays(
      name, train, test, description=f'{name} (official train/test): {description}',
      preprocessing=preprocess.preprocessing('pixels/255', False, _SOURCE),
      random_split=False,
      schemas=dict.fromkeys(train, schema.FeatureSchema(
          (schema.Feature('image', 'image', scale=255.0),), statistics=_SOURCE,
          label='label', image_shape=(*IMAGE_SHAPE, 1))))


def read_npz(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """'train'/'test' -> (images float32 [N, 28, 28, 1] in [0, 1], labels int64 [N])."""
  if not os.path.isfile(path):
    raise DataError(f'file {path}: not found')
  try:
    loaded = np.load(path)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise ValueError('a single array, not an .npz archive')
    with loaded as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f'file {path}: not a readable MedMNIST .npz file ({e})') from None
  return {split: _split_arrays(path, arrays, split) for split in ('train', 'test')}


def _split_arrays(path: str, arrays: dict[str, np.ndarray],
                  split: str) -> tuple[np.ndarray, np.ndarray]:
  images_key, labels_key = f'{split}_images', f'{split}_labels'
  for key in (images_key, labels_key):
    if key not in arrays:
      raise DataError(f'file {path}: key {key!r} missing (keys: {", ".join(sorted(arrays))})')
  images, labels = arrays[images_key], arrays[labels_key]
  if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
    raise DataError(f'file {path}, key {images_key!r}: shape {images.shape}, expected '
                    f'(N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})')
  if labels.ndim not in (1, 2) or labels.ndim == 2 and labels.shape[1] != 1:
    raise DataError(f'file {path}, key {labels_key!r}: shape {labels.shape}, expected '
                    '(N,) or (N, 1)')
  labels = labels.reshape(-1)
  if len(labels) != len(images):
    raise DataError(f'file {path}: {len(labels)} labels in {labels_key!r} but '
                    f'{len(images)} images in {images_key!r}')
  for key, values in ((images_key, images), (labels_key, labels)):
    if values.dtype.kind not in 'biuf':
      raise DataError(f'file {path}, key {key!r}: dtype {values.dtype} is not numeric')
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
      raise DataError(f'file {path}, key {key!r}, row {int(np.argmax(bad))} (0-based): '
                      'NaN or infinite value')
  bad = ~np.isin(labels, (0, 1))
  if bad.any():
    row = int(np.argmax(bad))
    raise DataError(f'file {path}, key {labels_key!r}, row {row} (0-based): '
                    f'label {labels[row]} is not 0 or 1')
  x = (images.astype(np.float32) / 255.0)[..., np.newaxis]
  return x, labels.astype(np.int64)
