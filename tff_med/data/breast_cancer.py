"""Wisconsin Diagnostic Breast Cancer (sklearn's bundled copy) split into simulated hospitals.

569 records, 30 features, label 1 = malignant (sklearn's target is 0 =
malignant, so it is flipped). A stratified pooled train/test split is z-scored
once with the training pool's mean/std (the measurement units a consortium
agrees on; this is a simulation, so nothing private is pooled), then divided
into hospitals with `partition.simulate_hospitals`. Z-scoring before the split
keeps a 'profiles' hospital's feature shift (in global stds) visible to the
model, beside its prevalence shift.
"""

from collections.abc import Sequence

from sklearn import datasets

from tff_med.data import preprocess
from tff_med.data.errors import DataError
from tff_med.data.federated_data import FederatedData
from tff_med.data.partition import simulate_hospitals

DEFAULT_PROFILE_FEATURES = ('mean radius', 'mean perimeter', 'mean area')


def load(num_hospitals: int = 3, partition: str = 'profiles', seed: int = 0,
         dirichlet_alpha: float = 0.5, profile_features: Sequence[str] | None = None,
         test_fraction: float = 0.34) -> FederatedData:
  """Builds `num_hospitals` simulated hospitals (see `simulate_hospitals`).

  `profile_features`: feature names shifted per 'profiles' hospital (default
  DEFAULT_PROFILE_FEATURES); `test_fraction`: share of the pool held out for test.

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
  pool_train, pool_test = preprocess.standardize_hospitals({'pool': train}, {'pool': test})
  _, train, test, description = simulate_hospitals(
      pool_train['pool'], pool_test['pool'], num_hospitals, partition, seed, dirichlet_alpha,
      profile_features=[names.index(f) for f in features])
  return FederatedData.from_arrays('breast_cancer', train, test, feature_names=names,
                                   description=f'Wisconsin breast cancer: {description}')
