"""Distributed discrete Gaussian noise for masking (`secure_agg.mode=masking privacy.level=client`).

Each hospital clips its update to L2 norm C (`l2_norm_clip`), quantises it with
the `Quantizer` below (deterministic rounding, scale = levels / (2 secagg_clip)
integers per parameter unit) and adds discrete Gaussian noise N_Z(0, sigma_int^2)
per coordinate inside its secret offset (`masking.Hospital`), so its noise share,
like its update, reaches the server only masked. The server knows the survivors,
hence the affine offset (levels / 2 per coordinate and survivor); beyond it one
hospital's update moves the integer sum by at most (L2, d parameters)
  Delta_int = scale C + sqrt(d) / 2.

Collusion. The server and k colluding hospitals (`secure_agg.colluders`) know the
colluders' noise shares, and the target hospital's own share is conservatively
not counted. Hospitals refuse to reveal below the threshold t, so the worst
released round has t survivors and h_worst = t - k - 1 honest shares; a share has
  sigma_int = ceil(z Delta_int / sqrt(h_worst))
(rounded up: TF Privacy's sampler takes integer scales), so a round with s >= t
survivors carries, against the server and k colluders, a noise multiplier of at
least z sqrt((s - k - 1) / (t - k - 1)) (`round_noise_multiplier`).

The shares come from TF Privacy's sampler (`masking.sample_discrete_gaussian`),
which, as its documentation says, relaxes the exact algorithm of Canonne,
Kamath, Steinke to float Bernoulli and geometric draws.

Accounting. The sum of h honest shares is accounted as the Gaussian of std
sqrt(h) sigma_int. The approximation: a discrete Gaussian has the concentrated
DP of the continuous one of the same sigma (Canonne, Kamath, Steinke 2020); the
sum of h of them is close to one (Kairouz, Liu, Steinke 2021, Theorem 1): it is
1/2 eps^2-concentrated DP with eps^2 <= Delta_int^2 / (h sigma_int^2) + tau d / 2,
  tau = 10 sum_{j=1}^{h-1} exp(-2 pi^2 sigma_int^2 j / (j + 1))       (`tau`),
below 1e-15 h for sigma_int >= 2.

Wrap-around. The quantiser keeps `headroom` = ceil(7 sqrt(n) sigma_int) integers
free on either side of the sum of n quantised updates (the largest over the
cohort sizes n up to `max_cohort`). N_Z(0, sigma^2) is sigma-subgaussian
(Canonne, Kamath, Steinke 2020), so the survivors' noise exceeds the headroom in
one coordinate with probability at most 2 exp(-49 / 2) < 5e-11, a round wraps
with probability below d x 5e-11.
"""

import math

from tff_med.secure_agg.config import SecureAggConfig
from tff_med.secure_agg.masking import SecureAggregationAborted
from tff_med.secure_agg.tff_secure_sum import Quantizer

HEADROOM_STDS = 7  # Headroom, in standard deviations of the survivors' summed noise.


class DistributedDiscreteGaussian:
  """Noise shares and quantiser for noise multiplier `noise_multiplier` (z),
  clip `l2_norm_clip` (C, parameter units), `num_params` (d) and cohorts of up
  to `max_cohort` hospitals, with the threshold and colluders of `secure`."""

  def __init__(self, secure: SecureAggConfig, noise_multiplier: float, l2_norm_clip: float,
               num_params: int, max_cohort: int):
    if not noise_multiplier > 0 or not l2_norm_clip > 0:
      raise ValueError(f'noise multiplier {noise_multiplier} and L2 clip {l2_norm_clip}: '
                       'must be positive')
    self.secure, self.noise_multiplier, self.l2_norm_clip = secure, noise_multiplier, l2_norm_clip
    self.num_params, self.max_cohort = num_params, max_cohort
    self._cohorts = [n for n in range(2, max_cohort + 1) if self._honest_worst(n) >= 1]
    if not self._cohorts:
      raise ValueError(f'secure_agg.colluders={secure.colluders}: no cohort of up to '
                       f'{max_cohort} hospitals keeps an honest noise share')
    self.quantizer = self._fit_quantizer()

  def _threshold_colluders(self, cohort: int) -> tuple[int, int]:
    t = self.secure.threshold_for(cohort)
    return t, self.secure.colluders_for(t)

  def _honest_worst(self, cohort: int) -> int:
    """h_worst = t - k - 1 for a cohort (< 1: no round of it may be noised)."""
    t, k = self._threshold_colluders(cohort)
    return t - k - 1 if t <= cohort else 0

  def _scale_for(self, cohort: int, quantizer: Quantizer) -> int:
    delta = quantizer.scale * self.l2_norm_clip + math.sqrt(self.num_params) / 2
    return math.ceil(self.noise_multiplier * delta / math.sqrt(self._honest_worst(cohort)))

  def _headroom_needed(self, headroom: int) -> int:
    quantizer = Quantizer(self.secure.bits, self.secure.clip, self.max_cohort, headroom)
    return max(math.ceil(HEADROOM_STDS * math.sqrt(n) * self._scale_for(n, quantizer))
               for n in self._cohorts)

  def _fit_quantizer(self) -> Quantizer:
    """The quantiser with the least headroom that covers its own noise (the need
    falls as the headroom grows: fewer levels, smaller Delta_int)."""
    low, high = 0, (2**self.secure.bits - 1 - self.max_cohort) // 2  # high: levels = 1.
    if high < 0 or self._headroom_needed(high) > high:
      raise ValueError(f'secure_agg.bits={self.secure.bits} leaves no room for the noise of '
                       f'{self.max_cohort} hospitals at noise multiplier '
                       f'{self.noise_multiplier:.3g}; raise secure_agg.bits')
    while low < high:  # Smallest headroom h with need(h) <= h.
      middle = (low + high) // 2
      if self._headroom_needed(middle) <= middle:
        high = middle
      else:
        low = middle + 1
    return Quantizer(self.secure.bits, self.secure.clip, self.max_cohort, low)

  @property
  def sensitivity(self) -> float:
    """Delta_int = scale C + sqrt(d) / 2, integers (L2)."""
    return self.quantizer.scale * self.l2_norm_clip + math.sqrt(self.num_params) / 2

  def share_scale(self, cohort: int) -> int:
    """sigma_int of each hospital's noise share in a round of `cohort` hospitals;
    raises SecureAggregationAborted where its threshold leaves no honest share."""
    if cohort not in self._cohorts:
      t, k = self._threshold_colluders(cohort)
      raise SecureAggregationAborted(
          f'a cohort of {cohort} hospitals (threshold {t}, {k} colluders) keeps no honest '
          'noise share: the round is aborted and nothing is released')
    return self._scale_for(cohort, self.quantizer)

  def _honest_shares(self, survivors: int, cohort: int) -> tuple[int, int]:
    """(s - k - 1, t - k - 1) after checking t <= survivors <= cohort."""
    t, k = self._threshold_colluders(cohort)
    if not t <= survivors <= cohort:
      raise ValueError(f'{survivors} survivors of {cohort}: must be between the threshold {t} '
                       'and the cohort (below it nothing is released)')
    return survivors - k - 1, t - k - 1

  def round_noise_multiplier(self, survivors: int, cohort: int) -> float:
    """z sqrt((s - k - 1) / (t - k - 1)): noise std / sensitivity of a round's sum
    with `survivors` (s) of `cohort` hospitals, against the server and k colluders."""
    honest, worst = self._honest_shares(survivors, cohort)
    return self.noise_multiplier * math.sqrt(honest / worst)

  def tau(self, survivors: int, cohort: int) -> float:
    """Kairouz-Liu-Steinke tau of the round's s - k - 1 honest shares."""
    honest, _ = self._honest_shares(survivors, cohort)
    sigma = self.share_scale(cohort)
    return 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * j / (j + 1)) for j in range(1, honest))
