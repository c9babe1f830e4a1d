"""tff_med.privacy.accounting against dp_accounting called directly on hand-built events."""

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from tff_med.privacy import (PrivacyLedger, calibrate_noise_multiplier, check_hospital_delta,
                             check_record_delta, default_record_delta, dp_sgd_event, epsilon,
                             make_accountant, sampled_round_event, substitution_bound)

SIGMA = 2.0
DELTA = 1e-3


def _direct(accountant_cls, event, count, delta=DELTA):
  """Reference: `event` composed `count` times in a fresh dp_accounting accountant."""
  return accountant_cls().compose(dp_accounting.SelfComposedDpEvent(event, count)).get_epsilon(delta)


def _sampled_gaussian(q, sigma=SIGMA):
  return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


def test_record_level_per_hospital_epsilon_matches_direct_rdp():
  rows = {'small': 40, 'mid': 150, 'large': 600}
  batch, local_steps, rounds = 8, 3, 20
  rates = {h: batch / n for h, n in rows.items()}
  ledger = PrivacyLedger('record', 'rdp', DELTA, SIGMA, 1.0, rates)
  total_steps = dict.fromkeys(rows, 0)
  for r in range(rounds):
    for h in rows:
      steps = 0 if h == 'mid' and r % 4 == 0 else local_steps  # 'mid' skips 5 rounds.
      ledger.record(h, dp_sgd_event(rates[h], SIGMA, steps), steps)
      total_steps[h] += steps

  assert total_steps['mid'] == (rounds - 5) * local_steps
  expected = {h: _direct(rdp.RdpAccountant, _sampled_gaussian(rates[h]), total_steps[h])
              for h in rows}
  report = ledger.report()
  for h in rows:
    assert ledger.epsilon(h) == pytest.approx(expected[h], rel=1e-9)
    assert report['per_hospital'][h] == {'epsilon': pytest.approx(expected[h], rel=1e-9),
                                         'delta': DELTA, 'sampling_rate': rates[h],
                                         'steps': total_steps[h]}
  assert expected['small'] > expected['mid'] > expected['large']
  assert report['epsilon'] == pytest.approx(expected['small'], rel=1e-9)
  assert ledger.max_epsilon() == report['epsilon']
  assert report['non_private_rounds'] == dict.fromkeys(rows, 0)
  assert {k: report[k] for k in ('level', 'accountant', 'delta', 'noise_multiplier',
                                 'l2_norm_clip')} == {
      'level': 'record', 'accountant': 'rdp', 'delta': DELTA, 'noise_multiplier': SIGMA,
      'l2_norm_clip': 1.0}
  assert 'hospital small (worst of 3 hospitals)' in report['statement']
  assert 'RDP accountant' in report['statement']


@pytest.mark.parametrize('name, accountant_cls', [('rdp', rdp.RdpAccountant),
                                                  ('pld', pld.PLDAccountant)])
def test_hospital_level_with_client_sampling_matches_direct(name, accountant_cls):
  q, rounds = 3 / 10, 50
  ledger = PrivacyLedger('client', name, DELTA, SIGMA, 0.5, {'all hospitals': q})
  for _ in range(rounds):
    ledger.record('all hospitals', sampled_round_event(dp_accounting.GaussianDpEvent(SIGMA), q),
                  steps=1)
  expected = _direct(accountant_cls, _sampled_gaussian(q), rounds)
  report = ledger.report()
  assert report['epsilon'] == pytest.approx(expected, rel=1e-9)
  assert report['per_hospital']['all hospitals']['steps'] == rounds
  assert "each hospital's whole dataset" in report['statement']


def test_hospital_level_without_sampling_gets_no_amplification():
  rounds = 50
  gaussian = dp_accounting.GaussianDpEvent(SIGMA)
  assert sampled_round_event(gaussian, 1.0) == gaussian
  ledger = PrivacyLedger('client', 'rdp', DELTA, SIGMA, 0.5, {'all hospitals': 1.0})
  for _ in range(rounds):
    ledger.record('all hospitals', sampled_round_event(gaussian, 1.0))
  expected = _direct(rdp.RdpAccountant, gaussian, rounds)
  assert ledger.epsilon('all hospitals') == pytest.approx(expected, rel=1e-9)
  assert expected > _direct(rdp.RdpAccountant, _sampled_gaussian(0.3), rounds)


@pytest.mark.parametrize('q, sigma, steps', [(0.3, 1.0, 50), (1.0, 2.0, 20), (8 / 150, 1.1, 60)])
def test_pld_is_no_larger_than_rdp(q, sigma, steps):
  events = [dp_sgd_event(q, sigma, steps)]
  assert epsilon(events, DELTA, 'pld') <= epsilon(events, DELTA, 'rdp')


@pytest.mark.parametrize('accountant', ['rdp', 'pld'])
def test_non_private_event_gives_infinite_epsilon_and_says_why(accountant):
  events = [dp_sgd_event(0.05, SIGMA, 3), dp_accounting.NonPrivateDpEvent()]
  assert epsilon(events, DELTA, accountant) == math.inf

  ledger = PrivacyLedger('record', accountant, DELTA, SIGMA, 1.0, {'A': 0.05, 'B': 0.02})
  for r in range(3):
    ledger.record('B', dp_sgd_event(0.02, SIGMA, 3), 3)
    ledger.record('A', dp_accounting.NonPrivateDpEvent() if r == 1 else
                  dp_sgd_event(0.05, SIGMA, 3), 0 if r == 1 else 3)
  report = ledger.report()
  assert report['epsilon'] == math.inf
  assert report['per_hospital']['A']['epsilon'] == math.inf
  assert math.isfinite(report['per_hospital']['B']['epsilon'])
  assert report['non_private_rounds'] == {'A': 1, 'B': 0}
  assert report['statement'] == ('no DP guarantee: hospital A released 1 un-noised update(s) '
                                 'of its records (epsilon is infinite)')

  client = PrivacyLedger('client', accountant, DELTA, SIGMA, 1.0, {'all hospitals': 1.0})
  client.record('all hospitals', dp_accounting.GaussianDpEvent(SIGMA))
  client.record('all hospitals', dp_accounting.NonPrivateDpEvent())
  statement = client.report()['statement']
  assert statement.startswith('no DP guarantee: 1 round(s) released an un-noised aggregate')
  assert statement.endswith('(epsilon is infinite)')


@pytest.mark.parametrize('accountant', ['rdp', 'pld'])
def test_pending_preview_equals_recording_and_records_nothing(accountant):
  rates = {'A': 0.05, 'B': 0.01}
  ledger = PrivacyLedger('record', accountant, DELTA, SIGMA, 1.0, rates)
  for _ in range(4):
    for h, q in rates.items():
      ledger.record(h, dp_sgd_event(q, SIGMA, 3), 3)
  before = ledger.report()
  next_a = dp_sgd_event(rates['A'], SIGMA, 5)  # A different event from the recorded ones.
  preview = ledger.epsilon('A', pending=[next_a])
  worst = ledger.max_epsilon({'A': [next_a]})
  assert ledger.report() == before
  assert preview > before['per_hospital']['A']['epsilon']
  assert worst == preview

  ledger.record('A', next_a, 5)
  assert ledger.epsilon('A') == pytest.approx(preview, rel=1e-12)
  expected = make_accountant(accountant).compose(dp_sgd_event(rates['A'], SIGMA, 12)).compose(
      next_a).get_epsilon(DELTA)
  assert preview == pytest.approx(expected, rel=1e-6)


def test_calibration_meets_target_and_is_smallest():
  target, steps = 2.0, 60
  event_fn = lambda sigma: dp_sgd_event(8 / 40, sigma, steps)
  sigma = calibrate_noise_multiplier(target, DELTA, 'rdp', {'small': event_fn})
  assert _direct(rdp.RdpAccountant, _sampled_gaussian(8 / 40, sigma), steps) <= target
  assert _direct(rdp.RdpAccountant, _sampled_gaussian(8 / 40, 0.98 * sigma), steps) > target

  fns = {h: (lambda q: lambda s: dp_sgd_event(q, s, steps))(8 / n)
         for h, n in {'small': 40, 'large': 600}.items()}
  assert calibrate_noise_multiplier(target, DELTA, 'rdp', fns) == sigma
  assert calibrate_noise_multiplier(target, DELTA, 'rdp', {'large': fns['large']}) < sigma

  assert calibrate_noise_multiplier(math.inf, DELTA, 'rdp', fns) == 0.0
  with pytest.raises(ValueError, match='privacy.target_epsilon'):
    calibrate_noise_multiplier(0.0, DELTA, 'rdp', fns)


def test_record_delta_default_and_check():
  assert default_record_delta({'a': 199, 'b': 40}) == 1e-4
  assert default_record_delta({'a': 1000}) == 1e-5
  assert default_record_delta({'a': 999, 'b': 5}) == 1e-4
  rows = {'small': 40, 'big': 600}
  check_record_delta(1e-4, rows)
  check_record_delta(1 / 6000, rows)
  # m1: delta = 0.98 / n was accepted before; now delta must be at most 1 / (10 n).
  for bad in (0.98 / 600, 1.01 / 6000, 0.01):
    with pytest.raises(ValueError, match=r"privacy.target_delta.*'big' has 600"):
      check_record_delta(bad, rows)
  for bad in (0.0, 1.0, -1e-5):
    with pytest.raises(ValueError, match='privacy.target_delta'):
      check_record_delta(bad, rows)


def test_hospital_delta_is_at_most_a_tenth_of_one_over_the_hospitals():
  check_hospital_delta(0.025, 4)
  for bad in (0.2, 0.026, 0.0):
    with pytest.raises(ValueError, match=r'privacy.target_delta.*1/\(10 x 4 hospitals\)'):
      check_hospital_delta(bad, 4)


def test_substitution_bound_is_group_privacy_for_two_changes():
  """m2: replacing a unit = removing one and adding one."""
  assert substitution_bound(1.0, 1e-5) == (2.0, pytest.approx((1 + math.e) * 1e-5))
  assert substitution_bound(math.inf, 1e-5) == (math.inf, 1e-5)


def test_joint_epsilon_composes_every_hospital():
  """m6: a patient with records at every hospital is charged all of their events."""
  rates = {'A': 0.1, 'B': 0.05}
  ledger = PrivacyLedger('record', 'rdp', DELTA, SIGMA, 1.0, rates)
  for h, q in rates.items():
    ledger.record(h, dp_sgd_event(q, SIGMA, 7), 7)
  direct = rdp.RdpAccountant().compose(dp_sgd_event(0.1, SIGMA, 7)).compose(
      dp_sgd_event(0.05, SIGMA, 7)).get_epsilon(DELTA)
  assert ledger.joint_epsilon() == pytest.approx(direct, rel=1e-9)
  assert ledger.joint_epsilon() > ledger.max_epsilon()


def test_events_and_accountant_names():
  assert dp_sgd_event(0.5, SIGMA, 0) == dp_accounting.NoOpDpEvent()
  assert dp_sgd_event(1.0, SIGMA, 4) == dp_accounting.SelfComposedDpEvent(
      dp_accounting.GaussianDpEvent(SIGMA), 4)
  assert dp_sgd_event(0.5, SIGMA, 4) == dp_accounting.SelfComposedDpEvent(_sampled_gaussian(0.5), 4)
  assert isinstance(make_accountant('rdp'), rdp.RdpAccountant)
  assert isinstance(make_accountant('pld'), pld.PLDAccountant)
  with pytest.raises(ValueError, match='privacy.accountant'):
    make_accountant('gdp')
