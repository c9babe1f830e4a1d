"""tff_med.secure_agg: exact modular sums under dropouts, aborts, what the server
sees (its transcript, and an unmasking attack on it), share handling, thresholds
above half, Shamir sharing, the quantiser and distributed discrete Gaussian noise."""

import math
import os
import secrets
import stat

import numpy as np
import pytest
import tensorflow as tf
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from tff_med.secure_agg import (Hospital, MaskingRound, Quantizer, SecureAggregationAborted,
                                Server, expand_mask, sample_discrete_gaussian, secure_sum)
from tff_med.secure_agg import masking, shamir
from tff_med.secure_agg.config import SecureAggConfig
from tff_med.secure_agg.ddp import DistributedDiscreteGaussian

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
  """Thresholds n // 2 + 1, ceil(2n/3) and n; 0 to n - t dropouts; byte accounting too."""
  d = 997
  cases = [(t, k) for t in sorted({n // 2 + 1, _threshold(n), n}) for k in range(n - t + 1)]
  for t, num_dropped in cases:
    seed = 1000 * n + 10 * t + num_dropped
    updates = _updates(n, d, bits, seed)
    dropouts = [str(h) for h in np.random.default_rng(seed).choice(list(updates), num_dropped,
                                                                  replace=False)]
    total, info, server = secure_sum(updates, bits, t, dropouts)

    survivors = [h for h in updates if h not in dropouts]
    expected = np.sum([updates[h] for h in survivors], axis=0, dtype=np.uint64) % 2**bits
    assert total.dtype == np.uint64
    np.testing.assert_array_equal(total, expected)
    assert info['survivors'] == tuple(survivors)
    assert set(info['dropped']) == set(dropouts)
    assert set(dict(server.transcript)['masked']) == {int(h[1:]) + 1 for h in survivors}

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


def _assert_uniform_and_alike(seen: dict, bits: int) -> None:
  """Each vector of `seen` uniform on [0, 2^bits) (chi-square on 64 equal bins),
  the two alike (two-sample Kolmogorov-Smirnov), each at level ALPHA."""
  for values in seen.values():
    counts, _ = np.histogram(values, bins=64, range=(0, 2**bits))
    assert stats.chisquare(counts).pvalue > ALPHA
  assert stats.ks_2samp(*seen.values()).pvalue > ALPHA


def test_server_view_does_not_depend_on_the_update():
  """The vector the server receives from hospital h0 is uniform whether h0's
  update is all zeros or all 2^bits - 1, and alike in both cases."""
  bits, d = 32, 20_000
  received = {}
  for value in (0, 2**bits - 1):
    updates = _updates(3, d, bits, seed=7)
    updates['h0'] = np.full(d, value, np.uint64)
    _, _, server = secure_sum(updates, bits, 2)  # Fresh keys every round.
    received[value] = dict(server.transcript)['masked'][1]
    assert np.mean(received[value] == updates['h0']) < 1e-3
  _assert_uniform_and_alike(received, bits)


def _run_round(n, t, updates, dropouts):
  """Hospitals 1..n and a server run one round by hand; returns the server and
  every message the hospitals sent it, as its transcript should hold them."""
  hospitals = {i: Hospital(f'h{i}', i, 32) for i in range(1, n + 1)}
  server = Server(32, t)
  keys = {i: h.public_keys() for i, h in hospitals.items()}
  broadcast = server.collect_keys(keys)
  bundles = {i: h.share_keys(broadcast, t) for i, h in hospitals.items()}
  for i, inbox in server.relay_shares(bundles).items():
    hospitals[i].receive_shares(inbox)
  masked = {i: hospitals[i].mask(updates[i]) for i in hospitals if i not in dropouts}
  survivors, dropped = server.collect_masked(masked)
  reveals = {i: hospitals[i].reveal(survivors, dropped) for i in sorted(survivors)}
  total = server.unmask(reveals)
  sent = [('public_keys', keys), ('shares', bundles), ('masked', masked), ('reveals', reveals)]
  return server, total, sent, hospitals


def _strip_what_the_server_can(transcript: list, target: int) -> np.ndarray:
  """The attack: from the transcript alone, rebuild every secret the reveals
  open (the survivors' self-mask seeds b, the dropped hospitals' s keys) and
  subtract from the target's masked vector every mask they give."""
  messages = dict(transcript)
  masked, reveals = messages['masked'], messages['reveals']
  y = masked[target]
  b = shamir.reconstruct({v: r.seed_shares[target] for v, r in reveals.items()})
  y = y - expand_mask(b.to_bytes(32, 'big'), len(y), 32)
  for u in messages['shares'].keys() - masked.keys():  # Dropped: their s key opens.
    s_key = shamir.reconstruct({v: r.key_shares[u] for v, r in reveals.items()})
    seed = masking._pair_seed(X25519PrivateKey.from_private_bytes(s_key.to_bytes(32, 'big')),
                              messages['public_keys'][target].masking)
    pair_mask = expand_mask(seed, len(y), 32)
    y = y - pair_mask if target < u else y + pair_mask
  return y & np.uint64(2**32 - 1)


def _transcript_bytes(transcript: list) -> bytes:
  """Every byte the transcript's messages carry, concatenated."""
  parts = []
  for step, message in transcript:
    for value in message.values():
      if step == 'public_keys':
        parts += [value.encryption, value.masking]
      elif step == 'shares':
        parts += list(value.values())
      elif step == 'masked':
        parts.append(value.tobytes())
      else:
        parts += [share.to_bytes(shamir.SHARE_BYTES, 'big')
                  for share in (*value.seed_shares.values(), *value.key_shares.values())]
  return b''.join(parts)


def test_server_transcript_holds_only_the_messages_and_cannot_unmask_one_hospital():
  """C1: the server's inputs are exactly the hospitals' protocol messages; an
  attacker holding the transcript strips all it can from hospital 1's masked
  vector and still sees uniform values, alike for an all-0 and an all-max
  update, while the survivors' sum is exact."""
  n, t, d = 5, 3, 20_000
  stripped = {}
  for value in (0, 2**32 - 1):
    updates = {i: np.random.default_rng(i).integers(0, 2**32, d, dtype=np.uint64)
               for i in range(1, n + 1)}
    updates[1] = np.full(d, value, np.uint64)
    server, total, sent, hospitals = _run_round(n, t, updates, dropouts={4})
    assert [step for step, _ in server.transcript] == [step for step, _ in sent]
    for (_, got), (_, message) in zip(server.transcript, sent):
      assert got.keys() == message.keys()
      for i in got:  # The very messages, nothing more.
        if isinstance(got[i], np.ndarray):
          np.testing.assert_array_equal(got[i], message[i])
        else:
          assert got[i] == message[i]
    assert set(vars(server)) == {'bits', 'threshold', 'transcript'}
    expected = np.sum([updates[i] for i in (1, 2, 3, 5)], axis=0, dtype=np.uint64) % 2**32
    np.testing.assert_array_equal(total, expected)
    blob = _transcript_bytes(server.transcript)
    for h in hospitals.values():  # No secret of any hospital appears in the transcript.
      for secret in (h._b, h._s.private_bytes_raw(), h._c.private_bytes_raw()):
        assert all(secret[i:i + 8] not in blob for i in range(len(secret) - 7))
    stripped[value] = _strip_what_the_server_can(server.transcript, target=1)
    assert np.mean(stripped[value] == updates[1]) < 1e-3
  _assert_uniform_and_alike(stripped, 32)


def test_the_driver_gets_no_mask():
  """C1: no round API hands out a mask; a hospital masks one input per round
  (a second, e.g. zeros, would give its offset away), file or vector alike."""
  assert not hasattr(MaskingRound, 'masks')
  with MaskingRound(['a', 'b', 'c'], 16, 2) as round_:
    round_.masked_vectors({'a': np.zeros(10, np.uint64)})
    with pytest.raises(ValueError, match='already masked an input this round'):
      round_.masked_vectors({'a': np.zeros(10, np.uint64)})
    with pytest.raises(ValueError, match='already masked an input this round'):
      round_.offset_files(10)


def test_offset_files_are_private_hold_the_mask_and_are_deleted():
  """Each hospital's offset file: its own 0700 folder, mode 0600, int64 values
  in [0, 2^bits), adding it to the updates gives the exact sum; gone after the
  round, also when it ends in an exception."""
  names, bits, d = ['a', 'b', 'c', 'd'], 16, 50
  updates = _updates(4, d, bits, seed=3)
  with MaskingRound(names, bits, 3) as round_:
    paths = round_.offset_files(d)
    assert len({os.path.dirname(p) for p in paths}) == 4
    for path in paths:
      assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
      assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    offsets = [np.fromfile(p, dtype='<i8') for p in paths]
    assert all(o.min() >= 0 and o.max() < 2**bits for o in offsets)
    total, _ = round_.finish({h: (updates[f'h{i}'] + o.astype(np.uint64)) % 2**bits
                              for i, (h, o) in enumerate(zip(names, offsets))})
  np.testing.assert_array_equal(total, np.sum(list(updates.values()), axis=0) % 2**bits)
  assert not any(os.path.exists(os.path.dirname(p)) for p in paths)
  with pytest.raises(RuntimeError, match='boom'):
    with MaskingRound(names, bits, 3) as round_:
      paths = round_.offset_files(d)
      raise RuntimeError('boom')
  assert not any(os.path.exists(os.path.dirname(p)) for p in paths)


def test_threshold_must_exceed_half_the_hospitals():
  """m4: t = 2 of 5 is refused by the config (naming the flag), the server and
  each hospital; 3 of 5 passes."""
  with pytest.raises(ValueError, match='secure_agg.threshold=2'):
    SecureAggConfig('masking', threshold=2).validate(5, 'uniform')
  SecureAggConfig('masking', threshold=3).validate(5, 'uniform')
  hospitals = {i: Hospital(f'h{i}', i, 8) for i in range(1, 6)}
  keys = {i: h.public_keys() for i, h in hospitals.items()}
  with pytest.raises(ValueError, match='more than half the hospitals'):
    Server(8, 2).collect_keys(keys)
  with pytest.raises(ValueError, match='more than half the hospitals'):
    hospitals[1].share_keys(keys, 2)
  with pytest.raises(ValueError, match='more than half the hospitals'):
    secure_sum(_updates(4, 10, 8, seed=0), 8, 2)  # 2 of 4 is half, not more.


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
  for sender, out in dict(server.transcript)['shares'].items():
    secrets_of_sender = (hospitals[sender]._s.private_bytes_raw(), hospitals[sender]._b)
    for recipient, bundle in out.items():
      held = hospitals[recipient]
      plain = (held._key_shares[sender].to_bytes(shamir.SHARE_BYTES, 'big'),
               held._seed_shares[sender].to_bytes(shamir.SHARE_BYTES, 'big'))
      for part in plain + secrets_of_sender:  # No 8-byte run of any of them.
        for start in range(len(part) - 7):
          assert part[start:start + 8] not in bundle
  bundle = dict(server.transcript)['shares'][1][2]
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
  total, info, _ = secure_sum(
      {h: quantizer.quantize(u).numpy().astype(np.uint64) for h, u in updates.items()}, bits, 3,
      dropouts=['east'])
  survivors = info['survivors']
  expected = np.sum([np.clip(updates[h], -clip, clip) for h in survivors], axis=0)
  error = np.abs(quantizer.dequantize_sum(total, len(survivors)).numpy() - expected)
  assert error.max() <= len(survivors) * quantizer.resolution / 2 + 1e-5  # float32 output.


def test_discrete_gaussian_noise_comes_from_the_os():
  """m5: the same experiment seeds twice give different noise; mean 0, std ~ scale."""
  draws = []
  for _ in range(2):
    tf.keras.utils.set_random_seed(0)
    np.random.seed(0)
    draws.append(sample_discrete_gaussian(50, 20_000))
  assert draws[0].dtype == np.int64 and not np.array_equal(*draws)
  for noise in draws:
    assert abs(noise.mean()) < 5 * 50 / math.sqrt(20_000)
    assert noise.std() == pytest.approx(50, rel=0.03)


def _ddp(n, bits=24, z=1.1, clip=0.1, d=1000, **secure):
  return DistributedDiscreteGaussian(SecureAggConfig('masking', bits=bits, clip=1.0, **secure),
                                     z, clip, d, n)


@pytest.mark.parametrize('n,threshold,colluders', [
    (5, 0, None), (5, 0, 0), (5, 4, 1), (10, 0, 3), (10, 10, None), (3, 0, 0)])
def test_noise_shares_against_the_closed_form(n, threshold, colluders):
  """m5 and M4: Delta_int = scale C + sqrt(d) / 2; each share of a cohort of m
  has std ceil(z Delta_int / sqrt(t - k - 1)); a round of s survivors has noise
  multiplier z sqrt((s - k - 1) / (t - k - 1)); the headroom covers 7 std of the
  summed noise of every cohort and n quantised updates still fit in 2^bits."""
  z, clip, d, bits = 1.1, 0.1, 1000, 24
  noise = _ddp(n, bits, z, clip, d, threshold=threshold, colluders=colluders)
  quantizer = noise.quantizer
  delta = quantizer.levels / 2 * clip + np.sqrt(d) / 2  # levels / (2 secagg_clip), clip 1.
  assert noise.sensitivity == pytest.approx(delta)
  assert n * quantizer.levels + 2 * quantizer.headroom <= 2**bits - 1
  for m in range(2, n + 1):
    t = threshold or max(2, math.ceil(2 * m / 3))
    k = t - 2 if colluders is None else colluders
    if t > m or t - k - 1 < 1:
      with pytest.raises(SecureAggregationAborted, match='keeps no honest noise share'):
        noise.share_scale(m)
      continue
    sigma = noise.share_scale(m)
    assert sigma == math.ceil(z * delta / np.sqrt(t - k - 1))
    assert quantizer.headroom >= 7 * np.sqrt(m) * sigma
    for s in range(t, m + 1):
      assert noise.round_noise_multiplier(s, m) == pytest.approx(
          z * np.sqrt((s - k - 1) / (t - k - 1)))
      js = np.arange(1, s - k - 1)
      assert noise.tau(s, m) == pytest.approx(
          10 * np.sum(np.exp(-2 * np.pi**2 * sigma**2 * js / (js + 1))), abs=1e-300)
    assert noise.round_noise_multiplier(t, m) == pytest.approx(z)  # The worst round.
    with pytest.raises(ValueError, match='between the threshold'):
      noise.round_noise_multiplier(t - 1, m)


@pytest.mark.parametrize('secure,message', [
    (SecureAggConfig('masking', threshold=3, colluders=2), r'secure_agg.colluders=2: .* 1'),
    (SecureAggConfig('masking', colluders=-1), 'secure_agg.colluders=-1'),
    (SecureAggConfig('tff', colluders=0), 'apply to secure_agg.mode=masking'),
])
def test_bad_colluders(secure, message):
  with pytest.raises(ValueError, match=message):
    secure.validate(5, 'uniform')


def test_colluders_default_to_threshold_minus_two():
  assert SecureAggConfig('masking').colluders_for(4) == 2
  assert SecureAggConfig('masking', colluders=1).colluders_for(4) == 1


@pytest.mark.parametrize('value', (-1.0, 1.0))
def test_noisy_sum_decodes_without_wrapping(value):
  """m5: updates at the quantiser's edges (every value -clip: integer 0; +clip:
  levels) plus discrete Gaussian noise decode to the clipped sum plus noise of
  std sqrt(s) sigma_int (in integers), mean 0, never wrapped around 2^bits."""
  n, d = 4, 20_000
  noise = _ddp(n, bits=20, threshold=3, colluders=0)
  quantizer, sigma = noise.quantizer, noise.share_scale(n)
  x = quantizer.quantize(np.full(d, value)).numpy().astype(np.uint64)
  total, info, _ = secure_sum({h: x for h in 'abcd'}, quantizer.bits, 3, dropouts=['d'],
                              noise_scale=sigma)
  error = (quantizer.dequantize_sum(total, 3).numpy() - 3 * value) / quantizer.resolution
  assert info['survivors'] == ('a', 'b', 'c')
  assert np.abs(error).max() < 7 * np.sqrt(3) * sigma  # A wrap would be ~2^20 off.
  assert abs(error.mean()) < 5 * np.sqrt(3) * sigma / np.sqrt(d)
  assert error.std() == pytest.approx(np.sqrt(3) * sigma, rel=0.03)
