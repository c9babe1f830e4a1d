"""Shamir t-of-n secret sharing over the prime field of the Mersenne prime 2^521 - 1.

Hand-written: no well-kept Python library offers Shamir sharing over a field this
large (the field must exceed 2^256 to hold 32-byte secrets). A share is the point
(x, f(x)) of a random polynomial f of degree t - 1 with f(0) = secret; x is the
holder's hospital index (a positive int), f(x) an int in [0, PRIME).
"""

import secrets
from collections.abc import Collection, Mapping

PRIME = 2**521 - 1
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66: one share value f(x), big-endian.


def split(secret: int, threshold: int, holders: Collection[int]) -> dict[int, int]:
  """Shares of `secret` (an int in [0, PRIME)), one per holder index: any
  `threshold` of them give the secret back, fewer give no information about it."""
  if not 0 <= secret < PRIME:
    raise ValueError('secret must be an int in [0, 2^521 - 1)')
  if not 1 <= threshold <= len(holders):
    raise ValueError(f'threshold {threshold}: must be between 1 and the {len(holders)} holders')
  if len(set(holders)) != len(holders) or not all(0 < x < PRIME for x in holders):
    raise ValueError(f'holder indices {sorted(holders)}: must be distinct and positive')
  coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]

  def evaluate(x: int) -> int:  # Horner's rule, mod PRIME.
    y = 0
    for c in reversed(coefficients):
      y = (y * x + c) % PRIME
    return y

  return {x: evaluate(x) for x in holders}


def reconstruct(shares: Mapping[int, int]) -> int:
  """f(0) by Lagrange interpolation through all the given points (x -> f(x)).
  With at least `threshold` shares of one secret this is the secret; with fewer
  it is an unrelated field element."""
  if not shares:
    raise ValueError('no shares to reconstruct from')
  secret = 0
  for xi, yi in shares.items():
    numerator, denominator = 1, 1
    for xj in shares:
      if xj != xi:
        numerator = numerator * xj % PRIME
        denominator = denominator * (xj - xi) % PRIME
    secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
  return secret
