"""tff_med.secure_agg: exact modular sums under dropouts, aborts, what the server
sees, share handling, Shamir sharing and the quantiser."""

import math
import secrets

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from scipy import stats

from tff_med.secure_agg import (Hospital, Quantizer, SecureAggregationAborted, Server,
                                expand_mask, secure_sum)
from tff_med.secure_agg import shamir

ALPHA = 1e-4


def _threshold(n):
  return math.ceil(2 * n / 3)


def _updates(n, d, bits, seed):
  rng = np.random.default_rng(seed)
  return {f'h{i}': rng.integers(0, 2**bits, d, dtype=np.uint64) for i in range(n)}


def _setup(n, bits=8):
  """Hospitals 1..n after key advertisement and share exchange, and their server."""
  t = _threshold(n)
  hospitals = {i: Hospital(f'h{i}', i, bits) for i in range(1, n + 1)}
  server = Server(bits, t)
  broadcast = server.collect_keys({i: h.public_keys() for i, h in hospitals.items()})
  bundles = {i: h.share_keys(broadcast, t) for i, h in hospitals.items()}
  for i, inbox in server.relay_shares(bundles).items():
    hospitals[i].receive_shares(inbox)
  return hospitals, server


@pytest.mark.parametrize('bits', (8, 16, 32))
@pytest.mark.parametrize('n', (3, 4, 6, 10))
def test_sum_is_exact_for_every_tolerated_number_of_dropouts(n, bits):
  """Thresholds 2, ceil(2n/3) and n; 0 to n - t dropouts; byte accounting too."""
  d = 997
  cases = [(t, k) for t in sorted({2, _threshold(n), n}) for k in range(n - t + 1)]
  for t, num_dropped in cases:
    seed = 1000 * n + 10 * t + num_dropped
    updates = _updates(n, d, bits, seed)
    dropouts = [str(h) for h in np.random.default_rng(seed).choice(list(updates), num_dropped,
                                                                  replace=False)]
    total, info = secure_sum(updates, bits, t, dropouts)

    survivors = [h for h in updates if h not in dropouts]
    expected = np.sum([updates[h] for h in survivors], axis=0, dtype=np.uint64) % 2**bits
    assert total.dtype == np.uint64
    np.testing.assert_array_equal(total, expected)
    assert info['survivors'] == tuple(survivors)
    assert set(info['dropped']) == set(dropouts)
    assert set(info['masked']) == set(survivors)

    share_bytes = (n - 1) * (12 + 2 * shamir.SHARE_BYTES + 16)
    assert info['masked_bytes'] == d * math.ceil(bits / 8)
    for h in updates:
      after_masking = 0 if h in dropouts else info['masked_bytes'] + n * shamir.SHARE_BYTES
      assert info['bytes_per_client'][h] == 64 + share_bytes + after_masking


@pytest.mark.parametrize('n', (3, 6))
def test_more_dropouts_than_tolerated_abort(n):
  t = _threshold(n)
  updates = _updates(n, 100, 16, seed=n)
  with pytest.raises(SecureAggregationAborted,
                     match=f'only {t - 1} hospitals sent masked vectors, below the threshold '
                           f'of {t}'):
    secure_sum(updates, 16, t, dropouts=list(updates)[:n - t + 1])


def test_server_view_does_not_depend_on_the_update():
  """The vector the server receives from hospital h0 is uniform whether h0's
  update is all zeros or all 2^bits - 1 (chi-square on 64 equal bins), the two are
  alike (two-sample Kolmogorov-Smirnov), each at significance level 0.0001 (ALPHA)."""
  bits, d = 32, 20_000
  received = {}
  for value in (0, 2**bits - 1):
    updates = _updates(3, d, bits, seed=7)
    updates['h0'] = np.full(d, value, np.uint64)
    _, info = secure_sum(updates, bits, 2)  # Fresh keys every round.
    received[value] = info['masked']['h0']
    assert np.mean(received[value] == updates['h0']) < 1e-3
  for seen in received.values():
    counts, _ = np.histogram(seen, bins=64, range=(0, 2**bits))
    assert stats.chisquare(counts).pvalue > ALPHA
  assert stats.ks_2samp(*received.values()).pvalue > ALPHA


def test_expand_mask_is_deterministic_and_in_range():
  seed = secrets.token_bytes(32)
  for bits in (2, 8, 32):
    mask = expand_mask(seed, 5000, bits)
    assert mask.dtype == np.uint64 and mask.shape == (5000,)
    assert mask.max() < 2**bits and len(np.unique(mask)) > min(2**bits, 5000) // 2
    np.testing.assert_array_equal(mask, expand_mask(seed, 5000, bits))
  assert not np.array_equal(expand_mask(seed, 100, 32), expand_mask(bytes(32), 100, 32))


def test_hospital_never_reveals_both_shares_of_a_peer():
  hospitals, _ = _setup(4)
  h1 = hospitals[1]
  with pytest.raises(ValueError, match='both as survivors and as dropped'):
    h1.reveal({1, 2, 3}, {3, 4})
  with pytest.raises(ValueError, match='lists it as dropped'):
    h1.reveal({2, 3, 4}, {1})
  first = h1.reveal({1, 2, 3}, {4})
  assert set(first.seed_shares) == {1, 2, 3} and set(first.key_shares) == {4}
  with pytest.raises(ValueError, match=r'already revealed the other kind of share of hospitals '
                                       r'\[3, 4\]'):
    h1.reveal({1, 2, 4}, {3})
  assert h1.reveal({1, 2, 3}, {4}) == first  # The same request again reveals nothing new.


def test_relayed_bundles_hide_the_shares():
  hospitals, server = _setup(4)
  for sender, out in server.bundles.items():
    secrets_of_sender = (hospitals[sender]._s.private_bytes_raw(), hospitals[sender]._b)
    for recipient, bundle in out.items():
      held = hospitals[recipient]
      plain = (held._key_shares[sender].to_bytes(shamir.SHARE_BYTES, 'big'),
               held._seed_shares[sender].to_bytes(shamir.SHARE_BYTES, 'big'))
      for part in plain + secrets_of_sender:  # No 8-byte run of any of them.
        for start in range(len(part) - 7):
          assert part[start:start + 8] not in bundle
  bundle = server.bundles[1][2]
  tampered = bundle[:-1] + bytes([bundle[-1] ^ 1])
  with pytest.raises(InvalidTag):
    hospitals[2].receive_shares({1: tampered})
  with pytest.raises(InvalidTag):  # Sent to 2, not readable by 3.
    hospitals[3].receive_shares({1: bundle})


@pytest.mark.parametrize('n,t', ((3, 2), (5, 3), (10, 7)))
def test_shamir_threshold(n, t):
  rng = np.random.default_rng(n)
  secret = int.from_bytes(secrets.token_bytes(32), 'big')
  shares = shamir.split(secret, t, range(1, n + 1))
  for _ in range(10):
    subset = rng.choice(n, size=t, replace=False) + 1
    assert shamir.reconstruct({int(x): shares[int(x)] for x in subset}) == secret
    too_few = rng.choice(n, size=t - 1, replace=False) + 1
    assert shamir.reconstruct({int(x): shares[int(x)] for x in too_few}) != secret
  assert shamir.reconstruct(shares) == secret


def test_quantizer_error_bound_and_no_wrap():
  n, bits, clip, d = 5, 16, 2.0, 4000
  quantizer = Quantizer(bits, clip, n)
  assert quantizer.resolution == 2 * clip / ((2**bits - 1) // n)
  rng = np.random.default_rng(0)
  values = rng.uniform(-clip, clip, (n, d))
  total = np.sum([quantizer.quantize(v).numpy() for v in values], axis=0) % 2**bits
  error = np.abs(quantizer.dequantize_sum(total, n).numpy() - values.sum(axis=0))
  assert error.max() <= n * quantizer.resolution / 2 + 1e-5  # float32 output.

  at_max = quantizer.quantize(np.full(d, 10 * clip)).numpy()  # Clipped to clip.
  assert at_max.max() == quantizer.levels and n * quantizer.levels <= 2**bits - 1
  np.testing.assert_allclose(quantizer.dequantize_sum(n * at_max % 2**bits, n), n * clip)
  at_min = quantizer.quantize(np.full(d, -clip)).numpy()
  np.testing.assert_allclose(quantizer.dequantize_sum(n * at_min, n), -n * clip)


def test_quantized_secure_sum_end_to_end():
  names, bits, clip = ('north', 'south', 'east', 'west'), 16, 1.0
  quantizer = Quantizer(bits, clip, len(names))
  rng = np.random.default_rng(1)
  updates = {h: rng.normal(0, 0.5, 300) for h in names}
  total, info = secure_sum(
      {h: quantizer.quantize(u).numpy().astype(np.uint64) for h, u in updates.items()}, bits, 3,
      dropouts=['east'])
  survivors = info['survivors']
  expected = np.sum([np.clip(updates[h], -clip, clip) for h in survivors], axis=0)
  error = np.abs(quantizer.dequantize_sum(total, len(survivors)).numpy() - expected)
  assert error.max() <= len(survivors) * quantizer.resolution / 2 + 1e-5  # float32 output.
