"""tff_med.evaluation.binary_metrics against numpy and scikit-learn, including a
diverged model's infinite and NaN logits."""

import numpy as np
import sklearn.metrics

from tff_med.evaluation import binary_metrics


def test_finite_logits_match_numpy_and_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  logits = rng.normal(size=200) + labels
  metrics = binary_metrics(logits.reshape(-1, 1), labels)
  assert metrics['accuracy'] == np.mean((logits > 0) == labels)
  assert metrics['auc'] == sklearn.metrics.roc_auc_score(labels, logits)


def test_infinite_logits_are_certain_predictions_ranked_at_the_ends():
  labels = np.array([1, 0, 1, 0, 1])
  logits = np.array([np.inf, -np.inf, 2.0, np.inf, -1.0])
  metrics = binary_metrics(logits, labels)
  assert metrics['accuracy'] == 3 / 5  # inf -> 1, -inf -> 0.
  # The same ranks with finite stand-ins: inf above 2.0, -inf below -1.0.
  assert metrics['auc'] == sklearn.metrics.roc_auc_score(labels, [9.0, -9.0, 2.0, 9.0, -1.0])


def test_a_nan_logit_makes_both_metrics_nan():
  metrics = binary_metrics(np.array([0.5, np.nan, -1.0]), np.array([1, 0, 0]))
  assert np.isnan(metrics['accuracy']) and np.isnan(metrics['auc'])
