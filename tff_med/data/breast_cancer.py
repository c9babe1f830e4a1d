"""Wisconsin Diagnostic Breast Cancer (sklearn's bundled copy) split into simulated hospitals.

569 records, 30 features, label 1 = malignant (sklearn's target is 0 =
malignant, so it is flipped). A stratified pooled train/test split is scaled
once, then divided into hospitals with `partition.simulate_hospitals`:
  zscore (data-dependent): with the training pool's mean/std (the measurement
    units a consortium agrees on; this is a simulation, so nothing private is
    pooled);
  public_ranges: each feature clipped to its published min/max
    (PUBLISHED_RANGES) and mapped to [-1, 1], record by record.
Scaling before the split keeps a 'profiles' hospital's feature shift (in
global stds) visible to the model, beside its prevalence shift. That shift
simulates how hospitals' populations differ, so it is part of making the
hospitals' records, not a transformation of a deployed model's inputs.
"""

from collections.abc import Sequence

from sklearn import datasets

from tff_med.data import preprocess
from tff_med.data import schema
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData
from tff_med.data.partition import simulate_hospitals

DEFAULT_PROFILE_FEATURES = ('mean radius', 'mean perimeter', 'mean area')
# Under public_ranges the profiles' shift unit in the [-1, 1] scale, declared
# (about one std of a size feature over its published range), not measured.
PROFILE_SHIFT_UNIT = 0.3
# Feature -> (min, max) as published in the data set's documentation: the
# 'Summary Statistics' table of sklearn's load_breast_cancer().DESCR (UCI
# Breast Cancer Wisconsin (Diagnostic), Wolberg, Street, Mangasarian 1995),
# copied verbatim for all 30 features. The table is rounded, so 14 of the
# 569 x 30 values lie outside by less than half its last digit and are clipped.
PUBLISHED_RANGES = {
    'mean radius': (6.981, 28.11), 'mean texture': (9.71, 39.28),
    'mean perimeter': (43.79, 188.5), 'mean area': (143.5, 2501.0),
    'mean smoothness': (0.053, 0.163), 'mean compactness': (0.019, 0.345),
    'mean concavity': (0.0, 0.427), 'mean concave points': (0.0, 0.201),
    'mean symmetry': (0.106, 0.304), 'mean fractal dimension': (0.05, 0.097),
    'radius error': (0.112, 2.873), 'texture error': (0.36, 4.885),
    'perimeter error': (0.757, 21.98), 'area error': (6.802, 542.2),
    'smoothness error': (0.002, 0.031), 'compactness error': (0.002, 0.135),
    'concavity error': (0.0, 0.396), 'concave points error': (0.0, 0.053),
    'symmetry error': (0.008, 0.079), 'fractal dimension error': (0.001, 0.03),
    'worst radius': (7.93, 36.04), 'worst texture': (12.02, 49.54),
    'worst perimeter': (50.41, 251.2), 'worst area': (185.2, 4254.0),
    'worst smoothness': (0.071, 0.223), 'worst compactness': (0.027, 1.058),
    'worst concavity': (0.0, 1.252), 'worst concave points': (0.0, 0.291),
    'worst symmetry': (0.156, 0.664), 'worst fractal dimension': (0.055, 0.208),
}


def load(num_hospitals: int = 3, partition: str = 'profiles', seed: int = 0,
         dirichlet_alpha: float = 0.5, profile_features: Sequence[str] | None = None,
         test_fraction: float = 0.34, scaling: str = 'zscore') -> FederatedData:
  """Builds `num_hospitals` simulated hospitals (see `simulate_hospitals`).

  `profile_features`: feature names shifted per 'profiles' hospital (default
  DEFAULT_PROFILE_FEATURES); `test_fraction`: share of the pool held out for
  test; `scaling`: one of preprocess.SCALINGS (see the module docstring).

  Raises:
    DataError: an unknown profile feature name, or a partition that leaves a
      hospital too few records.
  """
  data = datasets.load_breast_cancer()
  names = [str(n) for n in data.feature_names]
  features = tuple(profile_features or DEFAULT_PROFILE_FEATURES)
  unknown = [f for f in features if f not in names]
  if unknown:
    raise DataError(f'unknown breast_cancer profile feature(s) {unknown}; '
                    f'features are: {", ".join(names)}')
  train, test = preprocess.split_train_test('the breast_cancer pool', data.data,
                                            1 - data.target, test_fraction, seed)
  pool_train, pool_test, transforms = preprocess.scale_hospitals(
      {'pool': train}, {'pool': test}, scaling,
      {names.index(f): r for f, r in PUBLISHED_RANGES.items()})
  _, train, test, description = simulate_hospitals(
      pool_train['pool'], pool_test['pool'], num_hospitals, partition, seed, dirichlet_alpha,
      profile_features=[names.index(f) for f in features],
      shift_unit=None if scaling == 'zscore' else PROFILE_SHIFT_UNIT)
  source = ('mean/std of the pooled training records' if scaling == 'zscore'
            else "published min/max per feature ('Summary Statistics' of sklearn's "
                 'load_breast_cancer().DESCR, UCI WDBC), breast_cancer.PUBLISHED_RANGES')
  return FederatedData.from_arrays(
      'breast_cancer', train, test, feature_names=names,
      description=f'Wisconsin breast cancer: {description}',
      preprocessing=preprocess.preprocessing(scaling, scaling == 'zscore', source),
      schemas=schema.table_schemas(
          [schema.Feature(n, n) for n in names], dict.fromkeys(train, transforms['pool']),
          source, data_dependent=scaling == 'zscore', per_hospital=False,
          label='diagnosis', positive_label='malignant'))
