"""The split-half epsilon lower bound on mechanisms of exactly known privacy: it
exceeds the true epsilon in at most alpha of independent repeats, is 0 without
leakage (where the old library statistic was not), and has power."""

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from dp_accounting.pld import privacy_loss_mechanism
from tensorflow_privacy.privacy.privacy_tests import epsilon_lower_bound as elb

from tff_med.audit.epsilon_bound import epsilon_bound, split_half_bound

ALPHA = 0.05


def _allowed_exceedances(repeats: int) -> int:
  """Most repeats in which a valid bound may exceed the truth: the 99.9% quantile
  of Binomial(repeats, ALPHA), so a valid bound fails this check in < 0.1% of seeds."""
  return int(scipy.stats.binom.ppf(0.999, repeats, ALPHA))


def _bound(scores_in: np.ndarray, scores_out: np.ndarray, delta: float) -> float:
  """split_half_bound with the first half of each side selecting, the rest evaluating."""
  h_in, h_out = len(scores_in) // 2, len(scores_out) // 2
  return split_half_bound({'x': (scores_in[:h_in], scores_out[:h_out])},
                          {'x': (scores_in[h_in:], scores_out[h_out:])}, delta,
                          ALPHA)['epsilon_lower_bound']


def _gaussian_epsilon(mu: float, delta: float) -> float:
  """Exact epsilon at `delta` of mu-GDP (N(mu, 1) vs N(0, 1)), from dp_accounting's
  analytic delta(epsilon) of the Gaussian mechanism (sensitivity 1, sd 1 / mu)."""
  loss = privacy_loss_mechanism.GaussianPrivacyLoss(1 / mu, sensitivity=1)
  return scipy.optimize.brentq(lambda eps: loss.get_delta_for_epsilon(eps) - delta, 0, 50)


def test_formula_matches_clopper_pearson_by_hand():
  # 45 of 50 members and 3 of 60 non-members flagged, delta 1e-3.
  tpr_lo = scipy.stats.beta.ppf(ALPHA / 2, 45, 50 - 45 + 1)
  fpr_hi = scipy.stats.beta.ppf(1 - ALPHA / 2, 3 + 1, 60 - 3)
  expected = max(np.log((tpr_lo - 1e-3) / fpr_hi), np.log((1 - fpr_hi - 1e-3) / (1 - tpr_lo)))
  assert epsilon_bound(45, 50, 3, 60, 1e-3, ALPHA) == pytest.approx(expected, rel=1e-9)
  # A test flagging all 50 members and 40 of 50 non-members: the complement
  # relation (TNR vs FNR) gives the bound.
  tpr_lo = scipy.stats.beta.ppf(ALPHA / 2, 50, 1)
  fpr_hi = scipy.stats.beta.ppf(1 - ALPHA / 2, 41, 10)
  complement = np.log((1 - fpr_hi) / (1 - tpr_lo))
  assert np.log(tpr_lo / fpr_hi) < complement
  assert epsilon_bound(50, 50, 40, 50, 0.0, ALPHA) == pytest.approx(complement, rel=1e-9)
  assert epsilon_bound(25, 50, 25, 50, 0.0, ALPHA) == 0  # no evidence: 0, not negative
  # delta swallowing the whole TPR leaves nothing.
  assert epsilon_bound(1, 1000, 0, 1000, 0.01, ALPHA) == 0


def test_valid_on_randomized_response_at_known_epsilon():
  """Randomized response is exactly eps-DP (delta 0): a member's bit is 1 with
  probability e^eps / (1 + e^eps), a non-member's with 1 / (1 + e^eps). With 3,000
  records a side the bound comes close to eps, so an invalid bound would show."""
  epsilon, repeats, n = 1.5, 100, 3000
  p = np.exp(epsilon) / (1 + np.exp(epsilon))
  bounds = []
  for seed in range(repeats):
    rng = np.random.default_rng(seed)
    bounds.append(_bound((rng.random(n) < p).astype(float),
                         (rng.random(n) < 1 - p).astype(float), delta=0.0))
  assert sum(b > epsilon for b in bounds) <= _allowed_exceedances(repeats)
  assert np.median(bounds) > 0.8 * epsilon  # close to the truth: the check has teeth


@pytest.mark.parametrize('mu, delta', [(1.0, 1e-3), (2.0, 1e-5)])
def test_valid_on_gaussian_at_known_epsilon(mu, delta):
  """Member scores N(mu, 1), non-member scores N(0, 1): mu-GDP, whose exact
  epsilon(delta) is 3.14 at (1, 1e-3) and 10.0 at (2, 1e-5)."""
  epsilon, repeats, n = _gaussian_epsilon(mu, delta), 30, 4000
  bounds = []
  for seed in range(repeats):
    rng = np.random.default_rng(seed)
    bounds.append(_bound(rng.normal(mu, 1, n), rng.normal(0, 1, n), delta))
  assert sum(b > epsilon for b in bounds) <= _allowed_exceedances(repeats)
  assert min(bounds) > 0  # power: the leak is found every time


@pytest.mark.filterwarnings('ignore::RuntimeWarning')  # the library's Bailey bound
def test_no_leakage_gives_zero_where_the_old_statistic_did_not():
  """Members and non-members from one distribution (true epsilon 0 at every delta):
  the bound is 0 in at least 1 - alpha of repeats (up to the binomial allowance). The
  old audit's statistic, tensorflow-empirical-privacy's Bailey bound maximised over
  thresholds on all records, was positive in most of these repeats (38 of 40)."""
  repeats, n = 40, 400
  new, old = [], []
  for seed in range(repeats):
    rng = np.random.default_rng(1000 + seed)
    scores_in, scores_out = rng.normal(size=n), rng.normal(size=n)
    new.append(_bound(scores_in, scores_out, delta=1e-3))
    old.append(elb.EpsilonLowerBound(-scores_in, -scores_out, alpha=ALPHA)
               .compute_epsilon_lower_bound(elb.BoundMethod.BAILEY)[0])
  assert sum(b > 0 for b in new) <= _allowed_exceedances(repeats)
  assert sum(b > 0 for b in old) >= repeats // 2


def test_split_half_bound_record():
  rng = np.random.default_rng(0)
  selection = {'weak': (rng.normal(0.2, 1, 500), rng.normal(0, 1, 500)),
               'strong': (rng.normal(-3, 1, 500), rng.normal(0, 1, 500))}
  evaluation = {'weak': (rng.normal(0.2, 1, 400), rng.normal(0, 1, 300)),
                'strong': (rng.normal(-3, 1, 400), rng.normal(0, 1, 300))}
  result = split_half_bound(selection, evaluation, delta=1e-4, alpha=ALPHA)
  # The strong attack flags low scores as members; chosen on the selection half.
  assert (result['test']['attack'], result['test']['direction']) == ('strong', -1)
  s_in, s_out = evaluation['strong']
  t = result['test']['threshold']
  assert (result['flagged_members'], result['flagged_non_members']) == (
      np.sum(s_in <= t), np.sum(s_out <= t))
  assert (result['num_members'], result['num_non_members']) == (400, 300)
  assert result['epsilon_lower_bound'] == pytest.approx(float(epsilon_bound(
      result['flagged_members'], 400, result['flagged_non_members'], 300, 1e-4, ALPHA)))
  assert 0 < result['epsilon_lower_bound'] <= result['max_certifiable']
  assert (result['confidence'], result['delta']) == (1 - ALPHA, 1e-4)
  with pytest.raises(ValueError, match='alpha'):
    split_half_bound(selection, evaluation, delta=1e-4, alpha=1.0)
  with pytest.raises(ValueError, match='delta'):
    split_half_bound(selection, evaluation, delta=1.0, alpha=ALPHA)
