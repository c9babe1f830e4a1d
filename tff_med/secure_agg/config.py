"""`secure_agg.mode` modes and the aggregation each one plugs into training.

- `none`: TFF's plain weighted mean (float32 updates in the clear to the server).
- `tff`: `QuantizedSecureSumFactory` inside `tff.aggregators.MeanFactory` (with
  `privacy.level=client` refused: see `training.TrainConfig.validate`).
  Runs under TFF's test context, which lowers secure sums to plain sums.
- `masking`: `tff_med.mechanisms.masking.MaskingPlan`, the pairwise-masking protocol.

Secure aggregation sums unweighted updates, so it needs `algorithm.client_weighting=uniform`.
"""

import dataclasses
import math


from tff_med.secure_agg.tff_secure_sum import Quantizer

MODES = ('none', 'tff', 'masking')
FLOAT_BYTES = 4  # A plain update value on the wire: float32.


@dataclasses.dataclass(frozen=True)
class SecureAggConfig:
  """`mode`: one of MODES. `bits`: bit width b of the modular sum. `clip`: each
  update value is clipped to [-clip, clip] before quantisation (parameter units).
  `threshold`: masking's Shamir threshold t, more than half the cohort n (0:
  max(2, ceil(2n / 3))). `colluders`: k, the hospitals that distributed DP under
  masking assumes collude with the server, 0..t - 2 (None: t - 2, the largest
  coalition that leaves one honest noise share in a round of t survivors)."""
  mode: str = 'none'
  bits: int = 16
  clip: float = 1.0
  threshold: int = 0
  colluders: int | None = None

  def validate(self, cohort_size: int, client_weighting: str) -> None:
    """Raises ValueError naming the field at fault."""
    if self.mode not in MODES:
      raise ValueError(f'secure_agg.mode={self.mode!r}: choose one of {MODES}')
    if self.mode != 'masking' and (self.threshold or self.colluders is not None):
      raise ValueError('secure_agg.threshold and secure_agg.colluders apply to '
                       'secure_agg.mode=masking')
    if self.mode == 'none':
      return
    self.quantizer(cohort_size)  # Checks secure_agg.bits and secure_agg.clip.
    if client_weighting != 'uniform':
      raise ValueError(f'secure_agg.mode={self.mode} sums unweighted updates: use '
                       'algorithm.client_weighting=uniform')
    if self.mode == 'masking':
      t = self.threshold_for(cohort_size)
      if not 2 <= t <= cohort_size or 2 * t <= cohort_size:
        raise ValueError(f'secure_agg.threshold={t}: must be at least 2, more than half the '
                         f'cohort ({cohort_size} / 2) and at most the cohort')
      if not 0 <= self.colluders_for(t) <= t - 2:
        raise ValueError(f'secure_agg.colluders={self.colluders}: must be between 0 and '
                         f'secure_agg.threshold - 2 = {t - 2}')


  def quantizer(self, cohort_size: int) -> Quantizer:
    return Quantizer(self.bits, self.clip, cohort_size)

  def threshold_for(self, cohort_size: int) -> int:
    """Masking's threshold t for a cohort of `cohort_size` hospitals."""
    return self.threshold or max(2, math.ceil(2 * cohort_size / 3))

  def colluders_for(self, threshold: int) -> int:
    """k, the colluding hospitals distributed DP allows for at threshold t."""
    return threshold - 2 if self.colluders is None else self.colluders

  def bytes_per_client(self, num_params: int) -> float:
    """Bytes of one hospital's update on the wire (masking adds its key exchange,
    measured per round by the protocol)."""
    if self.mode == 'none':
      return FLOAT_BYTES * num_params
    return math.ceil(self.bits / 8) * num_params
