"""Pairwise-masking secure aggregation (Bonawitz et al., CCS 2017), semi-honest variant.

The server learns sum_u x_u mod 2^bits over the hospitals whose masked vectors it
received, never a single x_u. One round, between `Hospital` and `Server` objects
that only exchange protocol messages (`MaskingRound` routes them):
1. each hospital advertises two X25519 public keys, c (share encryption) and s
   (pairwise mask seeds); the server broadcasts them;
2. each hospital Shamir-shares (t of n) its s private key and its 32-byte
   self-mask seed b_u, sending hospital v's shares AES-GCM-encrypted under
   HKDF-SHA256(X25519(c_u, c_v)) through the server;
3. each sends y_u = x_u + o_u mod 2^bits, with its secret offset
   o_u = PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) (+ its discrete
   Gaussian noise share under distributed DP, `ddp.py`), s_uv =
   HKDF-SHA256(X25519(s_u, s_v)), ordered by hospital index. A hospital adds its
   offset once per round, itself (`mask`), or hands it to its own TFF client
   computation in a private file (`write_offset`); nothing returns it;
4. the server asks the survivors for shares of b_u of every survivor and of the
   s key of every hospital that dropped after step 2, rebuilds those, and strips
   the self masks and the survivor-dropped pairwise masks (survivor pairs cancel).
The server keeps every message it received, in order, in `Server.transcript`.

Threat model. Hides each hospital's update from a semi-honest server (it follows
the protocol but tries to learn from what it sees), also when it colludes with up
to t - 1 hospitals; tolerates up to n - t dropouts (with fewer than t survivors
the round aborts and releases nothing). The threshold must exceed n / 2: with
t <= n / 2 a server that tells two halves of the hospitals different dropout
lists could collect both kinds of share of one hospital. Not covered: a
malicious server that lies about dropouts otherwise (Bonawitz's consistency-check
round is not implemented); malicious hospitals sending garbage (it silently
corrupts the sum); collusion of t or more parties; what the aggregate itself
reveals (distributed DP, `ddp.py`, bounds that); traffic analysis. All parties
run in one process here: separation is by object (a hospital's secrets stay in
its `Hospital`) and by private file (mode 0600 in a directory of its own,
deleted after the round), not by machine, so the process could read them.

Hand-written: the Bonawitz protocol logic (no well-kept Python library offers it);
X25519, HKDF, AES-GCM and the ChaCha20 PRG come from `cryptography`, Shamir
sharing from `tff_med.secure_agg.shamir`, discrete Gaussian noise from TF Privacy.
"""

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import tensorflow as tf
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils

from tff_med.secure_agg import shamir

SEED_BYTES = 32  # b_u, s_uv and X25519 keys (private and public) alike.
NONCE_BYTES = 12  # AES-GCM nonce, sent in front of each share bundle.
_SHARE_INFO = b'tff_med secure_agg share encryption'
_MASK_INFO = b'tff_med secure_agg pairwise mask seed'


class SecureAggregationAborted(RuntimeError):
  """Fewer hospitals than the threshold are left: no aggregate is released."""


@dataclasses.dataclass(frozen=True)
class PublicKeys:
  """A hospital's advertised X25519 public keys, 32 raw bytes each: `encryption`
  (c, share bundles between hospitals) and `masking` (s, pairwise mask seeds)."""
  encryption: bytes
  masking: bytes


@dataclasses.dataclass(frozen=True)
class Reveal:
  """A survivor's unmasking answer, keyed by the hospital each share belongs to:
  `seed_shares` of b_v for survivors v, `key_shares` of the s key of dropped v."""
  seed_shares: dict[int, int]
  key_shares: dict[int, int]

  @property
  def num_bytes(self) -> int:
    """Bytes sent: shamir.SHARE_BYTES per share, in the order the server asked
    (so the hospital indices are implied)."""
    return shamir.SHARE_BYTES * (len(self.seed_shares) + len(self.key_shares))


def _check_bits(bits: int) -> None:
  if not 2 <= bits <= 32:
    raise ValueError(f'bits={bits}: must be between 2 and 32')


def check_threshold(threshold: int, num_hospitals: int) -> None:
  """Raises ValueError unless 2 <= threshold and threshold > num_hospitals / 2
  (at or below half, a server lying about dropouts to two halves of the
  hospitals could rebuild both secrets of one)."""
  if threshold < 2 or 2 * threshold <= num_hospitals:
    raise ValueError(f'threshold {threshold} of {num_hospitals} hospitals: must be at least 2 '
                     'and more than half the hospitals')


def _check_vector(values: np.ndarray, bits: int, what: str) -> np.ndarray:
  """`values` as uint64, after checking: shape (d,), integers in [0, 2^bits)."""
  values = np.asarray(values)
  if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
    raise ValueError(f'{what}: must be a 1-D integer array, got {values.dtype} {values.shape}')
  if values.size and (values.min() < 0 or values.max() >= 2**bits):
    raise ValueError(f'{what}: values must lie in [0, 2^{bits})')
  return values.astype(np.uint64)


def _hkdf(shared_secret: bytes, info: bytes) -> bytes:
  return HKDF(hashes.SHA256(), SEED_BYTES, salt=None, info=info).derive(shared_secret)


def _pair_seed(private: X25519PrivateKey, peer_public: bytes) -> bytes:
  """s_uv: the 32-byte pairwise mask seed, the same from either side."""
  return _hkdf(private.exchange(X25519PublicKey.from_public_bytes(peer_public)), _MASK_INFO)


def _bundle_aad(sender: int, recipient: int) -> bytes:
  """AES-GCM associated data: binds a share bundle to its sender and recipient."""
  return sender.to_bytes(4, 'big') + recipient.to_bytes(4, 'big')


def expand_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
  """PRG: `length` values uniform in [0, 2^bits), uint64 shape (length,): the
  ChaCha20 key stream under the 32-byte `seed` (zero nonce), 8 bytes per value as
  little-endian uint64 mod 2^bits (exactly uniform: 2^bits divides 2^64)."""
  if len(seed) != SEED_BYTES:
    raise ValueError(f'mask seed: must be {SEED_BYTES} bytes, got {len(seed)}')
  _check_bits(bits)
  stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(
      bytes(8 * length))
  return np.frombuffer(stream, dtype='<u8').astype(np.uint64) & np.uint64(2**bits - 1)


def sample_discrete_gaussian(scale: int, length: int) -> np.ndarray:
  """`length` draws of the discrete Gaussian N_Z(0, scale^2), int64 shape (length,):
  TF Privacy's sampler, run in a graph of its own whose seed comes from
  os.urandom, so experiment seeds (tf.keras.utils.set_random_seed) never fix it."""
  with tf.Graph().as_default() as graph:
    tf.random.set_seed(int.from_bytes(os.urandom(8), 'little') >> 1)  # This graph only.
    noise = discrete_gaussian_utils.sample_discrete_gaussian(scale, [length], tf.int64)
    with tf.compat.v1.Session(graph=graph) as session:
      return session.run(noise)


class Hospital:
  """One hospital's side of one round (keys are fresh per object: use one per
  round). Its secrets (private keys c and s, seed b_u, the shares it holds, its
  noise share of integer std `noise_scale`, 0 for none) leave it only as the
  protocol sends them; it adds its secret offset to one update per round."""

  def __init__(self, name: str, index: int, bits: int, noise_scale: int = 0):
    _check_bits(bits)
    if index < 1:
      raise ValueError(f'hospital {name!r}: index {index} must be positive')
    if noise_scale < 0:
      raise ValueError(f'hospital {name!r}: noise scale {noise_scale} must be non-negative')
    self.name, self.index, self.bits = name, index, bits
    self._c = X25519PrivateKey.generate()
    self._s = X25519PrivateKey.generate()
    self._b = os.urandom(SEED_BYTES)
    self._noise_scale = noise_scale
    self._peer_keys: dict[int, PublicKeys] = {}
    self._threshold = 0
    self._key_shares: dict[int, int] = {}  # hospital -> its share of that one's s key.
    self._seed_shares: dict[int, int] = {}  # hospital -> its share of that one's b.
    self._revealed: dict[int, str] = {}  # hospital -> 'seed' or 'key', the kind revealed.
    self._offset_used = False
    self._private_dir: str | None = None

  def public_keys(self) -> PublicKeys:
    """Step 1: what this hospital advertises."""
    return PublicKeys(self._c.public_key().public_bytes_raw(),
                      self._s.public_key().public_bytes_raw())

  def _bundle_cipher(self, peer: int) -> AESGCM:
    """AES-256-GCM keyed by HKDF-SHA256(X25519(c_self, c_peer))."""
    if peer == self.index or peer not in self._peer_keys:
      raise ValueError(f'{self.name}: no share channel with hospital {peer}')
    peer_public = X25519PublicKey.from_public_bytes(self._peer_keys[peer].encryption)
    return AESGCM(_hkdf(self._c.exchange(peer_public), _SHARE_INFO))

  def share_keys(self, public_keys: Mapping[int, PublicKeys], threshold: int
                 ) -> dict[int, bytes]:
    """Step 2: Shamir-shares (`threshold` of all advertised hospitals, itself
    included) the s private key and b; keeps its own shares and returns each other
    hospital's as nonce (12 bytes) + AES-GCM ciphertext of the two shares
    (2 x shamir.SHARE_BYTES) + tag (16 bytes), keyed by recipient index. Refuses
    a threshold of at most half the hospitals (`check_threshold`)."""
    if public_keys.get(self.index) != self.public_keys():
      raise ValueError(f'{self.name}: the broadcast does not hold my keys at index {self.index}')
    check_threshold(threshold, len(public_keys))
    self._peer_keys = {v: keys for v, keys in public_keys.items() if v != self.index}
    self._threshold = threshold
    key_shares = shamir.split(int.from_bytes(self._s.private_bytes_raw(), 'big'), threshold,
                              public_keys.keys())
    seed_shares = shamir.split(int.from_bytes(self._b, 'big'), threshold, public_keys.keys())
    self._key_shares[self.index] = key_shares[self.index]
    self._seed_shares[self.index] = seed_shares[self.index]
    bundles = {}
    for v in self._peer_keys:
      nonce = os.urandom(NONCE_BYTES)
      plaintext = (key_shares[v].to_bytes(shamir.SHARE_BYTES, 'big')
                   + seed_shares[v].to_bytes(shamir.SHARE_BYTES, 'big'))
      bundles[v] = nonce + self._bundle_cipher(v).encrypt(nonce, plaintext,
                                                          _bundle_aad(self.index, v))
    return bundles

  def receive_shares(self, bundles: Mapping[int, bytes]) -> None:
    """Step 2, relayed: decrypts and keeps the shares from each sender index;
    raises cryptography's InvalidTag on a bundle altered or meant for another."""
    for sender, bundle in bundles.items():
      plaintext = self._bundle_cipher(sender).decrypt(
          bundle[:NONCE_BYTES], bundle[NONCE_BYTES:], _bundle_aad(sender, self.index))
      self._key_shares[sender] = int.from_bytes(plaintext[:shamir.SHARE_BYTES], 'big')
      self._seed_shares[sender] = int.from_bytes(plaintext[shamir.SHARE_BYTES:], 'big')

  def _offset(self, length: int) -> np.ndarray:
    """o_u, uint64 shape (length,) in [0, 2^bits): self mask, pairwise masks with
    every hospital it got shares from, and the noise share. Once per round: a
    second offset for other inputs would let their difference unmask them."""
    if self._offset_used:
      raise ValueError(f'{self.name} refuses: it already masked an input this round')
    if not self._threshold:
      raise ValueError(f'{self.name}: no key shares exchanged yet')
    self._offset_used = True
    o = expand_mask(self._b, length, self.bits)
    for v in self._seed_shares.keys() - {self.index}:
      pair_mask = expand_mask(_pair_seed(self._s, self._peer_keys[v].masking), length,
                              self.bits)
      o = o + pair_mask if self.index < v else o - pair_mask  # uint64 wraps mod 2^64.
    if self._noise_scale:
      o = o + sample_discrete_gaussian(self._noise_scale, length).astype(np.uint64)
    return o & np.uint64(2**self.bits - 1)

  def mask(self, quantized: np.ndarray) -> np.ndarray:
    """Step 3: y_u, uint64 shape (d,) in [0, 2^bits), from `quantized` (shape (d,),
    integers in [0, 2^bits)), masked here."""
    x = _check_vector(quantized, self.bits, f'{self.name} update')
    return (x + self._offset(len(x))) & np.uint64(2**self.bits - 1)

  def write_offset(self, length: int) -> str:
    """Step 3 for its own TFF client computation: writes o_u (`length` int64
    little-endian values in [0, 2^bits)) to a file, mode 0600, in a fresh private
    directory (mode 0700), and returns the file's path, the handle that
    computation reads it by; `discard` deletes both."""
    offset = self._offset(length)
    self._private_dir = tempfile.mkdtemp(prefix='tff_med_secagg_')
    path = os.path.join(self._private_dir, 'offset')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
      f.write(offset.astype('<i8').tobytes())
    return path

  def discard(self) -> None:
    """Deletes the offset file and its directory, if written."""
    if self._private_dir is not None:
      shutil.rmtree(self._private_dir, ignore_errors=True)
      self._private_dir = None

  def reveal(self, survivors: Collection[int], dropped: Collection[int]) -> Reveal:
    """Step 4: shares of b_v for `survivors`, of the s key for `dropped`. Raises
    ValueError, revealing nothing, if a hospital is in both, if this one is called
    dropped, or if any hospital's other kind of share was revealed before (both
    kinds together would unmask it); SecureAggregationAborted below the threshold."""
    survivors, dropped = set(survivors), set(dropped)
    if self.index not in survivors:
      raise ValueError(f'{self.name} refuses: the server lists it as dropped or absent')
    if survivors & dropped:
      raise ValueError(f'{self.name} refuses: hospitals {sorted(survivors & dropped)} are '
                       'listed both as survivors and as dropped')
    unknown = (survivors | dropped) - self._seed_shares.keys()
    if unknown:
      raise ValueError(f'{self.name} refuses: it holds no shares of hospitals {sorted(unknown)}')
    if len(survivors) < self._threshold:
      raise SecureAggregationAborted(f'{len(survivors)} survivors, below the threshold '
                                     f'{self._threshold}')
    kinds = dict.fromkeys(survivors, 'seed') | dict.fromkeys(dropped, 'key')
    both = sorted(v for v, kind in kinds.items() if self._revealed.get(v, kind) != kind)
    if both:
      raise ValueError(f'{self.name} refuses: it already revealed the other kind of share of '
                       f'hospitals {both}; both kinds would unmask them')
    self._revealed |= kinds
    return Reveal({v: self._seed_shares[v] for v in survivors},
                  {v: self._key_shares[v] for v in dropped})


class Server:
  """The aggregator: public parameters `bits` and `threshold`, then only the
  protocol messages, keyed by hospital index. `transcript` lists them in the
  order received, as (step, message): ('public_keys', index -> PublicKeys),
  ('shares', sender -> recipient -> ciphertext; it cannot read them),
  ('masked', index -> masked vector), ('reveals', index -> Reveal)."""

  def __init__(self, bits: int, threshold: int):
    _check_bits(bits)
    if threshold < 2:
      raise ValueError(f'threshold {threshold}: must be at least 2 (one share would be the secret)')
    self.bits, self.threshold = bits, threshold
    self.transcript: list[tuple[str, dict]] = []

  def _received(self, step: str) -> dict:
    return next((message for s, message in self.transcript if s == step), {})

  def _require(self, count: int, step: str) -> None:
    if count < self.threshold:
      raise SecureAggregationAborted(
          f'only {count} hospitals {step}, below the threshold of {self.threshold}: the round '
          'is aborted and no aggregate is released')

  def collect_keys(self, public_keys: Mapping[int, PublicKeys]) -> dict[int, PublicKeys]:
    """Step 1: stores the advertised keys; returns them for broadcast to all.
    Refuses a threshold of at most half of them (`check_threshold`)."""
    self._require(len(public_keys), 'advertised keys')
    check_threshold(self.threshold, len(public_keys))
    self.transcript.append(('public_keys', dict(public_keys)))
    return dict(public_keys)

  def relay_shares(self, bundles: Mapping[int, Mapping[int, bytes]]
                   ) -> dict[int, dict[int, bytes]]:
    """Step 2: sender -> recipient -> ciphertext in, recipient -> sender ->
    ciphertext out, among the hospitals that sent shares."""
    self._require(len(bundles), 'sent key shares')
    bundles = {u: dict(out) for u, out in bundles.items()}
    self.transcript.append(('shares', bundles))
    return {v: {u: out[v] for u, out in bundles.items() if u != v} for v in bundles}

  def collect_masked(self, masked: Mapping[int, np.ndarray]
                     ) -> tuple[frozenset[int], frozenset[int]]:
    """Step 3: stores the masked vectors (shape (d,), values in [0, 2^bits)) and
    returns the unmasking request (survivors, dropped): dropped hospitals sent
    shares but no vector. Aborts below the threshold."""
    senders = self._received('shares').keys()
    strangers = masked.keys() - senders
    if strangers:
      raise ValueError(f'masked vectors from hospitals {sorted(strangers)} that sent no shares')
    self._require(len(masked), 'sent masked vectors')
    masked = {u: _check_vector(y, self.bits, f'masked vector of hospital {u}')
              for u, y in masked.items()}
    if len({len(y) for y in masked.values()}) != 1:
      raise ValueError('masked vectors differ in length')
    self.transcript.append(('masked', masked))
    return frozenset(masked), frozenset(senders - masked.keys())

  def unmask(self, reveals: Mapping[int, Reveal]) -> np.ndarray:
    """Step 4: sum over survivors of x_u mod 2^bits, uint64 shape (d,), from the
    survivors' `reveals`; aborts if fewer than the threshold answered."""
    masked = self._received('masked')
    survivors, dropped = set(masked), self._received('shares').keys() - masked.keys()
    if not reveals.keys() <= survivors:
      raise ValueError(f'reveals from non-survivors {sorted(reveals.keys() - survivors)}')
    self._require(len(reveals), 'revealed shares')
    self.transcript.append(('reveals', dict(reveals)))

    def rebuild(owner: int, kind: str) -> bytes:  # kind: 'seed_shares' (b) or 'key_shares'.
      secret = shamir.reconstruct({v: getattr(r, kind)[owner] for v, r in reveals.items()})
      if secret >= 2**(8 * SEED_BYTES):
        raise ValueError(f'inconsistent shares of hospital {owner}: no 32-byte secret')
      return secret.to_bytes(SEED_BYTES, 'big')

    length = len(next(iter(masked.values())))
    total = np.sum(list(masked.values()), axis=0, dtype=np.uint64)
    for u in survivors:
      total -= expand_mask(rebuild(u, 'seed_shares'), length, self.bits)
    public_keys = self._received('public_keys')
    for u in dropped:
      s_key = X25519PrivateKey.from_private_bytes(rebuild(u, 'key_shares'))
      for v in survivors:  # v added PRG(s_vu) if v < u, subtracted it if v > u.
        pair_mask = expand_mask(_pair_seed(s_key, public_keys[v].masking), length, self.bits)
        total = total - pair_mask if v < u else total + pair_mask
    return total & np.uint64(2**self.bits - 1)


class MaskingRound:
  """Routes one protocol round among the hospitals `names` (index = position + 1),
  each a `Hospital` with integer noise std `noise_scale`: steps 1-2 in the
  constructor, step 3 by `masked_vectors` (the hospitals mask numpy updates) or
  `offset_files` (the paths their own TFF client computations read), steps 3-4
  at the server in `finish`. It passes on only messages and paths. Use it as a
  context manager: leaving it deletes the hospitals' offset files, also on error.
  """

  def __init__(self, names: Sequence[str], bits: int, threshold: int, noise_scale: int = 0):
    self.bits = bits
    self._hospitals = {i: Hospital(name, i, bits, noise_scale)
                       for i, name in enumerate(names, start=1)}
    self._index = {h.name: i for i, h in self._hospitals.items()}
    self.server = Server(bits, threshold)
    broadcast = self.server.collect_keys(
        {i: h.public_keys() for i, h in self._hospitals.items()})
    self._bundles = {i: h.share_keys(broadcast, threshold) for i, h in self._hospitals.items()}
    for i, inbox in self.server.relay_shares(self._bundles).items():
      self._hospitals[i].receive_shares(inbox)

  def __enter__(self) -> 'MaskingRound':
    return self

  def __exit__(self, *exc_info) -> None:
    for h in self._hospitals.values():
      h.discard()

  def masked_vectors(self, quantized: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> y_u, uint64 shape (d,): each hospital masks its own `quantized`
    update (shape (d,), integers in [0, 2^bits))."""
    return {name: self._hospitals[self._index[name]].mask(x) for name, x in quantized.items()}

  def offset_files(self, length: int) -> list[str]:
    """Each hospital's `write_offset(length)` path, in `names` order."""
    return [h.write_offset(length) for h in self._hospitals.values()]

  def finish(self, masked: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """The server gets the masked vectors of the hospitals in `masked` (the
    others dropped after masking), asks the survivors to reveal, and unmasks.

    Returns (sum of the survivors' x_u (+ noise) mod 2^bits, uint64 shape (d,),
    stats): `bytes_per_client` (name -> bytes sent: 2 x 32 public-key bytes + its
    share bundles, (n - 1) x 160, and for survivors the masked vector,
    `masked_bytes` = d x ceil(bits / 8), plus the reveal, n x
    shamir.SHARE_BYTES), `masked_bytes`, `survivors` and `dropped` (names, index
    order). Raises SecureAggregationAborted below the threshold.
    """
    unknown = masked.keys() - self._index.keys()
    if unknown:
      raise ValueError(f'masked vectors from {sorted(unknown)}, not in this round')
    survivors, dropped = self.server.collect_masked(
        {self._index[name]: y for name, y in masked.items()})
    reveals = {i: self._hospitals[i].reveal(survivors, dropped) for i in sorted(survivors)}
    total = self.server.unmask(reveals)
    masked_bytes = len(total) * math.ceil(self.bits / 8)
    sent = {h.name: 2 * SEED_BYTES + sum(map(len, self._bundles[i].values()))
            for i, h in self._hospitals.items()}
    for i in survivors:
      sent[self._hospitals[i].name] += masked_bytes + reveals[i].num_bytes
    name = lambda i: self._hospitals[i].name
    return total, {'bytes_per_client': sent, 'masked_bytes': masked_bytes,
                   'survivors': tuple(name(i) for i in sorted(survivors)),
                   'dropped': tuple(name(i) for i in sorted(dropped))}


def secure_sum(quantized: Mapping[str, np.ndarray], bits: int, threshold: int,
               dropouts: Collection[str] = (), noise_scale: int = 0
               ) -> tuple[np.ndarray, dict, Server]:
  """One round among the hospitals named by `quantized` (updates shape (d,),
  integers in [0, 2^bits)), each adding discrete Gaussian noise of integer std
  `noise_scale`; the `dropouts` leave after masking, so their masked vectors
  never reach the server. Returns `MaskingRound.finish`'s (sum, stats) and the
  server (its `transcript` is all it saw)."""
  unknown = set(dropouts) - quantized.keys()
  if unknown:
    raise ValueError(f'dropouts {sorted(unknown)} are not among the hospitals')
  with MaskingRound(list(quantized), bits, threshold, noise_scale) as round_:
    masked = round_.masked_vectors(quantized)
    total, stats = round_.finish({h: y for h, y in masked.items() if h not in dropouts})
  return total, stats, round_.server
