"""Test-set evaluation of a Keras model on every hospital and on the pooled test set.

Each hospital evaluates on its own test records; ROC-AUC is exact (scikit-learn
on the logits), NaN where a test set holds one class only; both metrics are NaN
for a model whose outputs are NaN.
"""

import numpy as np
import sklearn.metrics
import tensorflow as tf

from tff_med.data.federated_data import FederatedData


def binary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """accuracy (threshold: logit 0, i.e. probability 0.5) and ROC-AUC. An
  infinite logit is a certain prediction (AUC ranks it first or last); a NaN
  logit (a diverged model, e.g. under a scaled-update attack) makes both NaN."""
  logits = np.asarray(logits, dtype=np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if np.isnan(logits).any():
    return {'accuracy': float('nan'), 'auc': float('nan')}
  logits = np.nan_to_num(logits)  # +-inf -> the largest finite values, same order.
  accuracy = float(np.mean((logits > 0) == (labels == 1)))
  auc = (float(sklearn.metrics.roc_auc_score(labels, logits))
         if len(np.unique(labels)) == 2 else float('nan'))
  return {'accuracy': accuracy, 'auc': auc}


def evaluate(model: tf.keras.Model, data: FederatedData, batch_size: int = 1024) -> dict:
  """{'per_hospital': {name: {accuracy, auc, num_test}}, 'mean_hospital':
  `mean_over_hospitals`, 'pooled': {accuracy, auc}}."""
  logits = {h: np.concatenate([model(x, training=False).numpy() for x in
                               np.array_split(data.test[h][0],
                                              -(-len(data.test[h][0]) // batch_size))])
            for h in data.hospitals}
  per_hospital = {h: {**binary_metrics(logits[h], data.test[h][1]),
                      'num_test': int(len(data.test[h][1]))} for h in data.hospitals}
  pooled_logits = np.concatenate([logits[h] for h in data.hospitals])
  return {
      'per_hospital': per_hospital,
      'mean_hospital': mean_over_hospitals(per_hospital),
      'pooled': binary_metrics(pooled_logits, data.pooled('test')[1]),
  }


def mean_over_hospitals(per_hospital: dict) -> dict:
  """Unweighted means of accuracy and AUC over hospitals; AUC is undefined (NaN)
  where a test set holds one class, so its mean covers `auc_hospitals` of them."""
  aucs = [m['auc'] for m in per_hospital.values() if not np.isnan(m['auc'])]
  return {'accuracy': float(np.mean([m['accuracy'] for m in per_hospital.values()])),
          'auc': float(np.mean(aucs)) if aucs else float('nan'),
          'auc_hospitals': len(aucs)}
