"""Simulated hospitals: one pooled data set split into hospitals.

One concept: a weight matrix W of shape [num_hospitals, num_classes] with
W[k, c] = share of class c's records going to hospital k (each column sums to
1). `split_by_weights` cuts each class's shuffled records by cumulative shares.
The SAME W splits the training pool and the test pool, so each hospital's test
set follows its own label mix. Schemes:

  iid:       W = 1 / num_hospitals.
  dirichlet: each column ~ Dirichlet(alpha); redrawn until every hospital gets
             at least MIN_RECORDS training and MIN_RECORDS test records.
  profiles:  hospital types with their own disease prevalence and a feature
             shift (children's, general, oncology; cycled for more hospitals).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from tff_med.data.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # (x [N, *feature_shape], y [N] in {0, 1})

SCHEMES = ('iid', 'dirichlet', 'profiles')
NUM_CLASSES = 2
MIN_RECORDS = 5  # per hospital, in each of train and test
MAX_DIRICHLET_DRAWS = 100


@dataclasses.dataclass(frozen=True)
class Profile:
  """A hospital type: `prevalence` = share of label-1 records, `shift` in global stds."""
  name: str
  prevalence: float
  shift: float


PROFILES = (Profile('childrens', 0.15, -0.5),
            Profile('general', 0.35, 0.0),
            Profile('oncology', 0.65, 0.5))


def split_by_weights(labels: np.ndarray, weights: np.ndarray,
                     rng: np.random.Generator) -> list[np.ndarray]:
  """Record indices per hospital (shuffled), given W [num_hospitals, num_classes].

  Class c's indices are shuffled, then cut at round(cumsum(W[:, c]) * count_c).
  """
  labels = np.asarray(labels).reshape(-1)
  parts = [[] for _ in range(len(weights))]
  for c in range(weights.shape[1]):
    indices = rng.permutation(np.flatnonzero(labels == c))
    cuts = np.round(np.cumsum(weights[:-1, c]) * len(indices)).astype(int)
    for part, chunk in zip(parts, np.split(indices, cuts)):
      part.append(chunk)
  return [rng.permutation(np.concatenate(part)) for part in parts]


def hospital_profiles(num_hospitals: int) -> list[Profile]:
  """PROFILES cycled; names numbered ('childrens_1', 'general_2', ...) beyond 3."""
  profiles = [PROFILES[k % len(PROFILES)] for k in range(num_hospitals)]
  if num_hospitals > len(PROFILES):
    profiles = [dataclasses.replace(p, name=f'{p.name}_{k + 1}') for k, p in enumerate(profiles)]
  return profiles


def profile_weights(profiles: Sequence[Profile]) -> np.ndarray:
  """W for hospitals of roughly equal size with the profiles' prevalences.

  Hospital k takes n * p_kc records of class c (p_k1 = prevalence, p_k0 = 1 -
  prevalence) for the largest common size n; normalising each column to sum 1
  spreads the leftover records of the more plentiful class instead of dropping
  them. n cancels in that normalisation, so W[k, c] = p_kc / sum_j p_jc.
  """
  prevalence = np.array([p.prevalence for p in profiles])
  mix = np.stack([1 - prevalence, prevalence], axis=1)
  return mix / mix.sum(axis=0)


def _weights(scheme: str, num_hospitals: int, rng: np.random.Generator,
             dirichlet_alpha: float) -> np.ndarray:
  if scheme == 'iid':
    return np.full((num_hospitals, NUM_CLASSES), 1 / num_hospitals)
  if scheme == 'dirichlet':
    return rng.dirichlet(np.full(num_hospitals, dirichlet_alpha), size=NUM_CLASSES).T
  return profile_weights(hospital_profiles(num_hospitals))


def _shift_features(x: np.ndarray, shift: float, features: Sequence[int] | None,
                    std: np.ndarray) -> np.ndarray:
  x = np.array(x, dtype=np.result_type(x.dtype, np.float32))
  cols = slice(None) if features is None else list(features)
  x[:, cols] += shift * std
  return x


def simulate_hospitals(train_xy: Arrays, test_xy: Arrays, num_hospitals: int, scheme: str,
                       seed: int, dirichlet_alpha: float = 0.5,
                       profile_features: Sequence[int] | None = None,
                       shift_unit: float | None = None
                       ) -> tuple[list[str], dict[str, Arrays], dict[str, Arrays], str]:
  """Splits a pooled train set and test set into `num_hospitals` hospitals.

  Args:
    train_xy, test_xy: (x [N, ...], y [N] in {0, 1}) pools.
    num_hospitals: number of hospitals (>= 1).
    scheme: one of SCHEMES.
    seed: seeds every random draw (weights, shuffles).
    dirichlet_alpha: Dirichlet concentration; smaller = more label skew.
    profile_features: for 'profiles', the feature columns (indices into x's
      last axis for tables) shifted by the profile's shift times those
      features' std over all records; None = every value of the record, with
      one std over all values (for images: a brightness shift).
    shift_unit: the unit of the profiles' shift in the features' own units,
      declared by the caller (no statistics of the records); None = the std
      over all records, which makes every shifted record depend on all others.

  Returns:
    (hospital names, train dict, test dict, one-line description). Names are
    'hospital_1'.. for iid/dirichlet and profile names for 'profiles'.

  Raises:
    DataError: unknown scheme, bad num_hospitals/alpha, or a hospital left
      with fewer than MIN_RECORDS training or test records.
  """
  if scheme not in SCHEMES:
    raise DataError(f'unknown partition {scheme!r}; choose one of {", ".join(SCHEMES)}')
  if num_hospitals < 1:
    raise DataError(f'data.num_hospitals={num_hospitals}: must be at least 1')
  if scheme == 'dirichlet' and not dirichlet_alpha > 0:
    raise DataError(f'data.dirichlet_alpha={dirichlet_alpha}: must be positive')
  (train_x, train_y), (test_x, test_y) = train_xy, test_xy
  rng = np.random.default_rng(seed)
  for _ in range(MAX_DIRICHLET_DRAWS if scheme == 'dirichlet' else 1):
    weights = _weights(scheme, num_hospitals, rng, dirichlet_alpha)
    train_parts = split_by_weights(train_y, weights, rng)
    test_parts = split_by_weights(test_y, weights, rng)
    if min(len(p) for p in train_parts + test_parts) >= MIN_RECORDS:
      break
  else:
    advice = (f' in all {MAX_DIRICHLET_DRAWS} draws; raise data.dirichlet_alpha or lower '
              'data.num_hospitals' if scheme == 'dirichlet' else '; lower data.num_hospitals')
    raise DataError(f'{scheme} partition of {len(train_y)} training and {len(test_y)} test '
                    f'records into {num_hospitals} hospitals leaves a hospital with fewer '
                    f'than {MIN_RECORDS} training or test records{advice}')

  if scheme == 'profiles':
    profiles = hospital_profiles(num_hospitals)
    names = [p.name for p in profiles]
    pooled = np.concatenate([train_x, test_x])
    std = (shift_unit if shift_unit is not None else pooled.std() if profile_features is None
           else pooled[:, list(profile_features)].std(axis=0))
    shifts = [p.shift for p in profiles]
    # Only declared targets: the achieved prevalence is a statistic of the labels.
    description = (f'{num_hospitals} simulated hospitals, profiles partition: '
                   + ', '.join(f'{p.name} (target prevalence {p.prevalence}; shift '
                               f'{p.shift:+} {"std" if shift_unit is None else f"x {shift_unit:g}"})'
                               for p in profiles)
                   + f'; seed {seed}')
  else:
    names = [f'hospital_{k + 1}' for k in range(num_hospitals)]
    shifts = [0.0] * num_hospitals
    std = None
    description = (f'{num_hospitals} simulated hospitals, '
                   + ('IID partition' if scheme == 'iid'
                      else f'Dirichlet label-skew partition (alpha={dirichlet_alpha})')
                   + f'; seed {seed}')

  train, test = {}, {}
  for name, shift, train_idx, test_idx in zip(names, shifts, train_parts, test_parts):
    train_k, test_k = train_x[train_idx], test_x[test_idx]
    if shift:
      train_k = _shift_features(train_k, shift, profile_features, std)
      test_k = _shift_features(test_k, shift, profile_features, std)
    train[name] = (train_k, train_y[train_idx])
    test[name] = (test_k, test_y[test_idx])
  return names, train, test, description
