"""A confidence lower bound on epsilon from membership-inference scores.

What the bound means: with probability at least 1 - alpha over the audit's
randomness, `epsilon_lower_bound` is at most the epsilon at `delta` of the
mechanism that produced the scores, as seen by the one threshold test the
procedure picks, on this audit set. Formally: if every member's score is drawn
independently from P and every non-member's from Q, and P(A) <= e^eps Q(A) +
delta and Q(A) <= e^eps P(A) + delta for every event A (what (eps, delta)-DP
gives a membership test), the bound exceeds eps with probability at most alpha.
It is not an upper bound (0 does not mean private), and says nothing about
attacks other than the ones tried. The records of one training run share one
model, so they are independent trials only approximately (members and
non-members are a random train/test split; Steinke, Nasr & Jagielski, NeurIPS
2023, analyse one-run audits exactly). The audit set's sizes cap what it can
certify even for a perfect attack (`max_certifiable`).

Procedure (split-half Clopper-Pearson, after Jagielski, Ullman & Oprea, NeurIPS
2020, and Nasr et al., IEEE S&P 2021):
  1. Members and non-members are each split at random into a selection half and
     an evaluation half.
  2. On the selection half, every attack's score, both directions (flag scores
     >= t, or <= t) and every threshold t are tried; the (attack, direction, t)
     whose selection-half bound (step 4's formula) is largest becomes the test.
  3. On the evaluation half the test flags k_in of n_in members and k_out of
     n_out non-members. One-sided Clopper-Pearson bounds TPR >= TPR_lo and
     FPR <= FPR_hi, each at confidence 1 - alpha/2, hold together with
     probability >= 1 - alpha (Bonferroni).
  4. (eps, delta)-DP implies TPR <= e^eps FPR + delta and, for the complement,
     1 - FPR <= e^eps (1 - TPR) + delta (Kairouz, Oh & Viswanath, ICML 2015), so
       eps >= max(0, log((TPR_lo - delta) / FPR_hi),
                     log((1 - FPR_hi - delta) / (1 - TPR_lo))),
     a term with a non-positive numerator giving no evidence.
No library offers this: tensorflow-empirical-privacy's EpsilonLowerBound takes
the largest of per-threshold bounds on the data that chose the threshold and
ignores delta, and dp_accounting computes upper bounds only.
"""

from collections.abc import Mapping

import numpy as np
from statsmodels.stats.proportion import proportion_confint

METHOD = ('split-half Clopper-Pearson: attack, direction and threshold chosen on a '
          'random half of members and non-members, TPR and FPR bounded on the other '
          'half (Bonferroni over the two), eps from TPR <= e^eps FPR + delta and '
          '1 - FPR <= e^eps (1 - TPR) + delta')


def check_parameters(delta: float, alpha: float) -> None:
  """Raises ValueError unless 0 <= delta < 1 and 0 < alpha < 1."""
  if not 0 <= delta < 1:
    raise ValueError(f'delta={delta}: the bound\'s delta must be in [0, 1)')
  if not 0 < alpha < 1:
    raise ValueError(f'alpha={alpha}: must be in (0, 1)')


def rate_bounds(k_in, n_in: int, k_out, n_out: int, alpha: float) -> tuple:
  """Step 3: (TPR_lo, FPR_hi) from k_in of n_in members and k_out of n_out
  non-members flagged (int arrays of equal shape, or scalars)."""
  # Two-sided 'beta' at alpha = one-sided Clopper-Pearson at 1 - alpha/2 per end.
  return (proportion_confint(k_in, n_in, alpha=alpha, method='beta')[0],
          proportion_confint(k_out, n_out, alpha=alpha, method='beta')[1])


def epsilon_from_rates(tpr_lo, fpr_hi, delta: float) -> np.ndarray:
  """Step 4: the eps lower bound (nats, >= 0) implied by TPR >= tpr_lo, FPR <= fpr_hi."""
  with np.errstate(divide='ignore'):  # log(0) = -inf: no evidence from that relation
    direct = np.log(np.maximum(tpr_lo - delta, 0) / fpr_hi)
    complement = np.log(np.maximum(1 - fpr_hi - delta, 0) / (1 - tpr_lo))
  return np.maximum(0.0, np.maximum(direct, complement))


def epsilon_bound(k_in, n_in: int, k_out, n_out: int, delta: float, alpha: float) -> np.ndarray:
  """Steps 3-4: eps lower bound (nats, >= 0) from flagged counts as in rate_bounds."""
  return epsilon_from_rates(*rate_bounds(k_in, n_in, k_out, n_out, alpha), delta)


def _flagged(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """Number of `scores` >= each of `thresholds`."""
  return len(scores) - np.searchsorted(np.sort(scores), thresholds, side='left')


def choose_test(selection: Mapping[str, tuple[np.ndarray, np.ndarray]], delta: float,
                alpha: float) -> dict:
  """Step 2: {attack, direction (+1: flag score >= threshold, -1: <=), threshold,
  selection_bound} maximising the bound on `selection` {attack: (member scores,
  non-member scores)}; the first attack and threshold win ties."""
  best = {'selection_bound': -1.0}
  for attack, (s_in, s_out) in selection.items():
    for direction in (1, -1):
      thresholds = np.unique(np.r_[s_in, s_out] * direction)
      bounds = epsilon_bound(_flagged(s_in * direction, thresholds), len(s_in),
                             _flagged(s_out * direction, thresholds), len(s_out), delta, alpha)
      i = int(np.argmax(bounds))
      if bounds[i] > best['selection_bound']:
        best = {'attack': attack, 'direction': direction,
                'threshold': float(thresholds[i] * direction),
                'selection_bound': float(bounds[i])}
  return best


def split_half_bound(selection: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     evaluation: Mapping[str, tuple[np.ndarray, np.ndarray]], delta: float,
                     alpha: float) -> dict:
  """Steps 2-4 on scores {attack: (member scores, non-member scores)} of the
  selection and evaluation halves (disjoint records; the attacks' scoring fitted
  on the selection half at most).

  Returns {epsilon_lower_bound (nats), confidence (1 - alpha), delta, method, test
  (choose_test's), num_members / num_non_members (evaluation half),
  flagged_members / flagged_non_members, tpr_lower, fpr_upper, max_certifiable (the
  bound had the test flagged every evaluation member and no non-member)}.
  """
  check_parameters(delta, alpha)
  test = choose_test(selection, delta, alpha)
  s_in, s_out = (np.asarray(s) * test['direction'] for s in evaluation[test['attack']])
  t = test['threshold'] * test['direction']
  n_in, n_out = len(s_in), len(s_out)
  k_in, k_out = int(np.sum(s_in >= t)), int(np.sum(s_out >= t))
  tpr_lo, fpr_hi = rate_bounds(k_in, n_in, k_out, n_out, alpha)
  return {
      'epsilon_lower_bound': float(epsilon_from_rates(tpr_lo, fpr_hi, delta)),
      'confidence': 1 - alpha,
      'delta': delta,
      'method': METHOD,
      'test': test,
      'num_members': n_in, 'num_non_members': n_out,
      'flagged_members': k_in, 'flagged_non_members': k_out,
      'tpr_lower': float(tpr_lo), 'fpr_upper': float(fpr_hi),
      'max_certifiable': float(epsilon_bound(n_in, n_in, 0, n_out, delta, alpha)),
  }
