"""Membership-inference audit of a trained Keras model (one logit per record).

Members are a hospital's training records, non-members its held-out test
records. Attacks and metrics come from TensorFlow Privacy's membership-inference
library (`run_attacks`): threshold attacks on the loss and on the modified
prediction entropy (Song & Mittal), and logistic-regression and MLP attackers
trained on [logits, loss] with 2-fold cross-validation. An attacker AUC near 0.5
means members and non-members look alike to the attack. With one logit per
record the modified entropy is -2 (1 - p_y) log p_y, a monotone function of the
loss, so the two threshold attacks rank records alike and report equal numbers.

Every audit returns, per attack type (`attacks`, keyed by `AttackType.name`) and
for the attack with the highest AUC (`best`):
  auc: area under the attack's ROC curve (members positive).
  advantage: max over thresholds of |TPR - FPR| (the library's definition).
  tpr_at_fpr_1pct, tpr_at_fpr_0.1pct: TPR at FPR 1% / 0.1%, linearly interpolated
    between ROC points. FPR is resolved only in steps of 1 / num_non_members, so
    these are NaN unless there are at least 100 / 1000 non-members.

Every audit also returns, for the whole audit set, `epsilon_lower_bound` (nats),
`epsilon_lower_bound_confidence` (1 - alpha) and `epsilon_lower_bound_details`
(epsilon_bound.split_half_bound's record: method, delta, the test chosen,
evaluation counts, max_certifiable). Its meaning: with probability at least
1 - alpha, the training's epsilon at `delta` for one record is at least this
much, as far as the one test chosen among these attacks can tell on this audit
set (records treated as independent trials); it is not an upper bound and says
nothing about other attacks (details in tff_med/audit/epsilon_bound.py). The
attacks above are rerun for it: members and non-members are split in halves
(seeded), the attack, direction and threshold chosen on one half and the bound
computed on the other; the threshold attacks score each record with its negated
loss or modified entropy, the trained attackers are fit on the selection half
only (which needs 3 members and 3 non-members there, for their 3-fold grid
search). NaN (details None) with fewer than 2 members or 2 non-members.
"""

import warnings

import numpy as np
import sklearn.exceptions
import tensorflow as tf
from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
    data_structures as mia_data)
from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
    membership_inference_attack as mia)
from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
    models as mia_models)

from tff_med.audit.epsilon_bound import split_half_bound
from tff_med.data.federated_data import Arrays, FederatedData
from tff_med.privacy.accounting import default_record_delta

AttackType = mia_data.AttackType
DEFAULT_ATTACKS = (AttackType.THRESHOLD_ATTACK, AttackType.THRESHOLD_ENTROPY_ATTACK,
                   AttackType.LOGISTIC_REGRESSION, AttackType.MULTI_LAYERED_PERCEPTRON)
DEFAULT_ALPHA = 0.05  # epsilon_lower_bound holds with confidence 1 - alpha
# Output key -> n: TPR at FPR = 1 / n, resolvable with at least n non-members.
LOW_FPRS = {'tpr_at_fpr_1pct': 100, 'tpr_at_fpr_0.1pct': 1000}


def binary_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-record loss in nats [N] from logits [N] and labels [N] in {0, 1}."""
  return np.logaddexp(0.0, logits) - labels * logits


def attack_inputs(model: tf.keras.Model, train_xy: Arrays,
                  test_xy: Arrays) -> mia_data.AttackInputData:
  """The library's input: members `train_xy`, non-members `test_xy`.

  Each record's logit z becomes the 2-class logits [-z/2, z/2] (softmax: [1-p, p]
  with p = sigmoid(z)), float64 [N, 2]; losses are binary cross-entropy [N];
  labels int64 [N].
  """
  def side(xy):
    z = model.predict(xy[0], batch_size=1024, verbose=0).reshape(-1).astype(np.float64)
    y = np.asarray(xy[1]).reshape(-1).astype(np.int64)
    return np.stack([-z / 2, z / 2], axis=1), binary_cross_entropy(z, y), y

  (logits_train, loss_train, labels_train), (logits_test, loss_test, labels_test) = (
      side(train_xy), side(test_xy))
  return mia_data.AttackInputData(
      logits_train=logits_train, logits_test=logits_test, loss_train=loss_train,
      loss_test=loss_test, labels_train=labels_train, labels_test=labels_test)


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
  """ROC curve's TPR at FPR `target` in (0, 1), linear between its points."""
  i = np.searchsorted(fpr, target, side='right') - 1  # last point with FPR <= target
  return float(tpr[i] + (tpr[i + 1] - tpr[i]) * (target - fpr[i]) / (fpr[i + 1] - fpr[i]))


def _metrics(result: mia_data.SingleAttackResult, num_non_members: int) -> dict:
  roc = result.roc_curve
  return {
      'auc': float(result.get_auc()),
      'advantage': float(result.get_attacker_advantage()),
      **{key: _tpr_at_fpr(roc.fpr, roc.tpr, 1 / n) if num_non_members >= n else float('nan')
         for key, n in LOW_FPRS.items()},
  }


def _scores(inputs: mia_data.AttackInputData, attack_type: AttackType,
            selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(member scores, non-member scores) of `attack_type`, higher = more member-like;
  a trained attacker is fit on the records `selected` (bool [members + non-members],
  members first) only."""
  if attack_type == AttackType.THRESHOLD_ATTACK:
    return -inputs.get_loss_train(), -inputs.get_loss_test()
  if attack_type == AttackType.THRESHOLD_ENTROPY_ATTACK:
    return -inputs.get_entropy_train(), -inputs.get_entropy_test()
  data = mia_models.create_attacker_data(inputs, balance=False)
  attacker = mia_models.create_attacker(attack_type)
  attacker.train_model(data.features_all[selected], data.labels_all[selected])
  scores = attacker.predict(data.features_all)
  return scores[:inputs.get_train_size()], scores[inputs.get_train_size():]


def _epsilon_lower_bound(inputs: mia_data.AttackInputData, attack_types, delta: float,
                         alpha: float, seed: int) -> dict | None:
  """split_half_bound over `attack_types` on a seeded random half split of members
  and of non-members; None with fewer than 2 of either."""
  sizes = (inputs.get_train_size(), inputs.get_test_size())
  if min(sizes) < 2:
    return None
  rng = np.random.default_rng(seed)
  selected = np.concatenate([rng.permutation(n) < n // 2 for n in sizes])
  trained_ok = min(n // 2 for n in sizes) >= 3
  halves = {'selection': {}, 'evaluation': {}}
  for attack_type in attack_types:
    if attack_type.is_trained_attack and not trained_ok:
      continue
    scores = np.concatenate(_scores(inputs, attack_type, selected))
    is_member = np.arange(len(scores)) < sizes[0]
    for half, mask in (('selection', selected), ('evaluation', ~selected)):
      halves[half][attack_type.name] = (scores[mask & is_member], scores[mask & ~is_member])
  return split_half_bound(halves['selection'], halves['evaluation'], delta, alpha)


NOT_RANDOM = ('members and non-members are not a random split of one pool (official '
              'train/test sets), so a member-vs-non-member test would measure their '
              'difference, not the model: no bound')


def audit_hospital(model: tf.keras.Model, train_xy: Arrays, test_xy: Arrays,
                   attack_types=DEFAULT_ATTACKS, seed: int = 0, delta: float | None = None,
                   alpha: float = DEFAULT_ALPHA, random_split: bool = True) -> dict:
  """Attacks `model` with members `train_xy` and non-members `test_xy`.

  Returns {num_members, num_non_members, fpr_resolution (1 / num_non_members),
  attacks: {AttackType.name: metrics}, best: {attack, **metrics} (max AUC; None if
  no attack ran), skipped: attack names the library could not run (a trained
  attack's nested cross-validation needs about 5 members and 5 non-members),
  epsilon_lower_bound, epsilon_lower_bound_confidence, epsilon_lower_bound_details};
  metrics and the bound as in the module docstring. `delta`: the bound's delta;
  None = default_record_delta of the members (what a DP run on them would use).
  Without a `random_split` the bound is NaN and its details say why.
  `seed` seeds the bound's half split and numpy's global generator, which the
  trained attackers draw on, for the call only.
  """
  inputs = attack_inputs(model, train_xy, test_xy)
  if delta is None:
    delta = default_record_delta({'members': inputs.get_train_size()})
  state = np.random.get_state()
  np.random.seed(seed)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', sklearn.exceptions.ConvergenceWarning)
      # The library's Bailey bound (unused here) takes sqrt of negatives at extreme
      # thresholds and drops the resulting NaNs itself.
      warnings.filterwarnings('ignore', category=RuntimeWarning, module='tensorflow_privacy')
      results = mia.run_attacks(inputs, attack_types=attack_types)
      bound = (_epsilon_lower_bound(inputs, attack_types, delta, alpha, seed)
               if random_split else {'refused': NOT_RANDOM})
  finally:
    np.random.set_state(state)
  num_non_members = inputs.get_test_size()
  attacks = {r.attack_type.name: _metrics(r, num_non_members)
             for r in results.single_attack_results}
  best = results.get_result_with_max_auc()
  return {
      'num_members': inputs.get_train_size(),
      'num_non_members': num_non_members,
      'fpr_resolution': 1 / num_non_members,
      'attacks': attacks,
      'best': None if best is None else {'attack': best.attack_type.name,
                                         **attacks[best.attack_type.name]},
      'skipped': [t.name for t in attack_types if t.name not in attacks],
      'epsilon_lower_bound': (bound or {}).get('epsilon_lower_bound', float('nan')),
      'epsilon_lower_bound_confidence': 1 - alpha,
      'epsilon_lower_bound_details': bound,
  }


def data_delta(data: FederatedData) -> float:
  """The delta a record-level DP run on `data` defaults to (default_record_delta)."""
  return default_record_delta({h: data.num_train(h) for h in data.hospitals})


def audit(model: tf.keras.Model, data: FederatedData, attack_types=DEFAULT_ATTACKS,
          seed: int = 0, delta: float | None = None, alpha: float = DEFAULT_ALPHA) -> dict:
  """{'per_hospital': {name: audit_hospital on that hospital's records},
  'overall': audit_hospital on all hospitals' members vs all non-members}, every
  bound at `delta` (None = data_delta(data))."""
  delta = data_delta(data) if delta is None else delta
  return {
      'per_hospital': {h: audit_hospital(model, data.train_arrays(h), data.test[h],
                                         attack_types, seed, delta, alpha,
                                         data.random_split)
                       for h in data.hospitals},
      'overall': audit_hospital(model, data.pooled('train'), data.pooled('test'),
                                attack_types, seed, delta, alpha, data.random_split),
  }


def audit_local_model(model: tf.keras.Model, data: FederatedData, hospital: str,
                      attack_types=DEFAULT_ATTACKS, seed: int = 0, delta: float | None = None,
                      alpha: float = DEFAULT_ALPHA) -> dict:
  """audit_hospital of `hospital`'s local-only model (trained on its records alone),
  at `delta` (None = data_delta(data), as audit)."""
  return audit_hospital(model, data.train_arrays(hospital), data.test[hospital],
                        attack_types, seed, data_delta(data) if delta is None else delta,
                        alpha, data.random_split)
