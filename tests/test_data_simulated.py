"""Simulated hospitals: partition schemes, breast_cancer and MedMNIST loaders."""

import os
import re

import numpy as np
import pytest
from sklearn import datasets

from tff_med import data
from tff_med.data import breast_cancer, medmnist, partition


def _pools(n_train=600, n_test=300, prevalence=0.4, seed=0):
  """Synthetic (x [N, 3] standard normal, independent of y; y [N]) train and test pools."""
  rng = np.random.default_rng(seed)
  return tuple((rng.standard_normal((n, 3)), (rng.random(n) < prevalence).astype(np.int64))
               for n in (n_train, n_test))


def _prevalences(split):
  return np.array([y.mean() for _, y in split.values()])


def test_split_by_weights_uses_every_record_once_with_the_class_shares():
  labels = np.repeat([0, 1], [300, 100])
  weights = np.array([[0.5, 0.1], [0.3, 0.2], [0.2, 0.7]])
  parts = partition.split_by_weights(labels, weights, np.random.default_rng(0))
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(400))
  counts = np.array([np.bincount(labels[p], minlength=2) for p in parts])
  np.testing.assert_array_equal(counts, [[150, 10], [90, 20], [60, 70]])


def test_iid_hospitals_are_equal_in_size_and_label_mix():
  train, test = _pools()
  names, train_h, test_h, _ = partition.simulate_hospitals(train, test, 4, 'iid', seed=0)
  assert names == ['hospital_1', 'hospital_2', 'hospital_3', 'hospital_4']
  sizes = [len(y) for _, y in train_h.values()]
  assert max(sizes) - min(sizes) <= 2 and sum(sizes) == 600
  assert np.ptp(_prevalences(train_h)) < 0.02 and np.ptp(_prevalences(test_h)) < 0.03


def test_dirichlet_skews_label_mix_and_is_reproducible():
  train, test = _pools()
  first = partition.simulate_hospitals(train, test, 4, 'dirichlet', seed=7,
                                       dirichlet_alpha=0.3)
  again = partition.simulate_hospitals(train, test, 4, 'dirichlet', seed=7,
                                       dirichlet_alpha=0.3)
  other = partition.simulate_hospitals(train, test, 4, 'dirichlet', seed=8,
                                       dirichlet_alpha=0.3)
  assert np.ptp(_prevalences(first[1])) > 0.3
  for name in first[0]:
    np.testing.assert_array_equal(first[1][name][0], again[1][name][0])
    np.testing.assert_array_equal(first[2][name][1], again[2][name][1])
    assert min(len(first[1][name][1]), len(first[2][name][1])) >= partition.MIN_RECORDS
  assert any(len(first[1][n][1]) != len(other[1][n][1]) for n in first[0])
  # The same weights split train and test: a hospital's test mix follows its train mix.
  assert np.corrcoef(_prevalences(first[1]), _prevalences(first[2]))[0, 1] > 0.9


def test_dirichlet_gives_up_with_advice():
  train, test = _pools(n_train=40, n_test=20)
  with pytest.raises(data.DataError,
                     match='raise data.dirichlet_alpha or lower data.num_hospitals'):
    partition.simulate_hospitals(train, test, 10, 'dirichlet', seed=0, dirichlet_alpha=0.05)


def test_profiles_names_prevalence_and_feature_shift():
  train, test = _pools(n_train=3000, n_test=1500)
  names, train_h, test_h, description = partition.simulate_hospitals(
      train, test, 5, 'profiles', seed=0, profile_features=[0])
  assert names == ['childrens_1', 'general_2', 'oncology_3', 'childrens_4', 'general_5']
  for split in (train_h, test_h):
    p = _prevalences(split)
    assert p[0] < p[1] < p[2] and abs(p[0] - p[3]) < 0.05
  assert 'childrens_1 (target prevalence 0.15; shift -0.5 std)' in description
  std = np.concatenate([train[0], test[0]])[:, 0].std()
  means = {n: train_h[n][0].mean(axis=0) for n in names}
  assert means['childrens_1'][0] - means['general_2'][0] == pytest.approx(-0.5 * std, abs=0.1)
  assert means['oncology_3'][0] - means['general_2'][0] == pytest.approx(0.5 * std, abs=0.1)
  assert abs(means['oncology_3'][1] - means['childrens_1'][1]) < 0.15  # not shifted


@pytest.mark.parametrize('kwargs, message', [
    (dict(scheme='random'), 'unknown partition'),
    (dict(num_hospitals=0), 'data.num_hospitals=0: must be at least 1'),
    (dict(num_hospitals=200), 'lower data.num_hospitals'),
])
def test_bad_partition_arguments(kwargs, message):
  train, test = _pools()
  args = dict(num_hospitals=3, scheme='iid', seed=0) | kwargs
  with pytest.raises(data.DataError, match=message):
    partition.simulate_hospitals(train, test, **args)


@pytest.fixture(scope='module')
def cancer():
  return data.load(data.DataConfig('breast_cancer'))


def test_breast_cancer_keeps_every_record_and_orders_prevalence(cancer):
  assert cancer.hospitals == ('childrens', 'general', 'oncology')
  assert cancer.feature_shape == (30,)
  train_y = [cancer.train_arrays(h)[1] for h in cancer.hospitals]
  test_y = [cancer.test[h][1] for h in cancer.hospitals]
  assert sum(map(len, train_y + test_y)) == 569
  malignant = (datasets.load_breast_cancer().target == 0).sum()
  assert sum(y.sum() for y in train_y + test_y) == malignant
  for ys in (train_y, test_y):
    prevalence = [y.mean() for y in ys]
    assert prevalence[0] < prevalence[1] < prevalence[2]
  # Pool z-scored on its training rows, then profile shifts of -0.5/0/+0.5 std on
  # the size features: undoing the shifts gives mean 0, std 1 over all training rows.
  sized = [cancer.feature_names.index(f) for f in breast_cancer.DEFAULT_PROFILE_FEATURES]
  unshifted = []
  for hospital, shift in zip(cancer.hospitals, (-0.5, 0.0, 0.5)):
    x = cancer.train_arrays(hospital)[0].astype(np.float64)
    x[:, sized] -= shift
    unshifted.append(x)
  pool = np.concatenate(unshifted)
  np.testing.assert_allclose(pool.mean(axis=0), 0, atol=1e-4)
  # Shifts are in stds over train+test records (about 1, not exactly): 5e-3.
  np.testing.assert_allclose(pool.std(axis=0), 1, atol=5e-3)


def test_breast_cancer_dirichlet_is_reproducible():
  first = breast_cancer.load(partition='dirichlet', seed=1)
  again = breast_cancer.load(partition='dirichlet', seed=1)
  assert first.hospitals == ('hospital_1', 'hospital_2', 'hospital_3')
  for hospital in first.hospitals:
    np.testing.assert_array_equal(first.test[hospital][0], again.test[hospital][0])
  assert np.ptp([first.test[h][1].mean() for h in first.hospitals]) > 0.1


def test_breast_cancer_unknown_profile_feature():
  with pytest.raises(data.DataError, match="unknown breast_cancer profile feature.*'size'"):
    breast_cancer.load(profile_features=('size',))


def test_breastmnist_counts_shape_and_labels(data_dir):
  fed = medmnist.load(data_dir, 'breastmnist', num_hospitals=3, partition='profiles')
  assert fed.feature_shape == (28, 28, 1)
  train = [fed.train_arrays(h) for h in fed.hospitals]
  assert sum(len(y) for _, y in train) == 546
  assert sum(len(fed.test[h][1]) for h in fed.hospitals) == 156
  # BreastMNIST's label 0 = malignant (147 train, 42 test) becomes label 1.
  assert sum(y.sum() for _, y in train) == 147
  assert sum(fed.test[h][1].sum() for h in fed.hospitals) == 42
  brightness = [x.mean() for x, _ in train]
  assert brightness[0] < brightness[1] < brightness[2]  # children's -0.5 std, oncology +0.5


def test_pneumoniamnist_iid_from_the_medmnist_folder(data_dir):
  fed = data.load(data.DataConfig('pneumoniamnist', os.path.join(data_dir, 'medmnist'),
                                  num_hospitals=4, partition='iid'))
  assert fed.hospitals == ('hospital_1', 'hospital_2', 'hospital_3', 'hospital_4')
  sizes = [fed.num_train(h) for h in fed.hospitals]
  assert sum(sizes) == 4708 and max(sizes) - min(sizes) <= 2
  x, _ = fed.test['hospital_1']
  assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def _write_npz(tmp_path, **overrides):
  rng = np.random.default_rng(0)
  arrays = {f'{split}_{kind}': value for split in ('train', 'test') for kind, value in (
      ('images', rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)),
      ('labels', np.tile([[0], [1]], (10, 1)).astype(np.uint8)))}
  arrays.update(overrides)
  path = tmp_path / 'breastmnist.npz'
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return str(path)


@pytest.mark.parametrize('overrides, message', [
    (dict(test_labels=None), "key 'test_labels' missing"),
    (dict(train_images=np.zeros((20, 28, 27), np.uint8)),
     r"key 'train_images': shape \(20, 28, 27\), expected \(N, 28, 28\)"),
    (dict(test_labels=np.zeros((19, 1), np.uint8)),
     "19 labels in 'test_labels' but 20 images in 'test_images'"),
    (dict(train_labels=np.array([0, 1, 2] + [0] * 17)),
     r"key 'train_labels', row 2 \(0-based\): label 2 is not 0 or 1"),
    (dict(test_images=np.where(np.arange(20)[:, None, None] == 5, np.nan,
                               np.zeros((20, 28, 28)))),
     r"key 'test_images', row 5 \(0-based\): NaN or infinite value"),
])
def test_bad_npz_names_file_key_and_row(tmp_path, overrides, message):
  path = _write_npz(tmp_path, **overrides)
  with pytest.raises(data.DataError, match=f'file {re.escape(path)}.*{message}'):
    medmnist.load(str(tmp_path), 'breastmnist')


def test_missing_or_unreadable_npz(tmp_path):
  path = tmp_path / 'breastmnist.npz'
  with pytest.raises(data.DataError, match=f'file {re.escape(str(path))}: not found'):
    medmnist.load(str(tmp_path), 'breastmnist')
  path.write_text('not a zip file')
  with pytest.raises(data.DataError, match='not a readable MedMNIST .npz'):
    medmnist.load(str(tmp_path), 'breastmnist')


def test_unknown_dataset():
  with pytest.raises(data.DataError, match='unknown data set.*heart_disease'):
    data.load(data.DataConfig('mnist'))
