"""A training run's settings: `TrainConfig`, which nests the algorithm's, the
privacy mechanism's and the secure aggregation's own configs.

Errors name config fields as dotted paths (`privacy.l2_norm_clip=0: ...`);
the experiment binaries map them back to their flag names.
"""

import dataclasses

from tff_med.algorithms import ALGORITHMS, AlgorithmConfig, check_unused_fields
from tff_med.privacy.dp_account import PrivacyConfig, check_level_none
from tff_med.personalization import PersonalizeConfig
from tff_med.secure_agg.config import SecureAggConfig


ROBUST = ('none', 'norm_bound', 'zeroing', 'median', 'trimmed_mean')


@dataclasses.dataclass(frozen=True)
class RobustConfig:
  """How the server combines the hospitals' updates against a bad hospital
  (`tff_med.mechanisms.robust.robust_factory` builds and checks it): `name`, one
  of ROBUST; `norm`: norm_bound's bound on each update's L2 norm / zeroing's
  threshold on its largest absolute value, the L-infinity norm (parameter units;
  None: TFF's adaptive estimate); `trim`:
  trimmed_mean's updates dropped at each end."""
  name: str = 'none'
  norm: float | None = None
  trim: int = 1


ATTACKS = ('none', 'label_flip', 'scaled_update', 'random_update', 'stale')


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """`name`: one of ATTACKS; `attacker`: the hospital that attacks; `scale`:
  scaled_update's factor, random_update's noise scale (unitless)."""
  name: str = 'none'
  attacker: str | None = None
  scale: float = 100.0

  def validate(self, hospitals) -> None:
    """ValueError naming the `attack.*` field at fault."""
    if self.name not in ATTACKS:
      raise ValueError(f'attack.name={self.name!r}: choose one of {", ".join(ATTACKS)}')
    if self.scale != 100.0 and self.name not in ('scaled_update', 'random_update'):
      raise ValueError(f'attack.scale={self.scale} applies to attack.name=scaled_update or '
                       f'random_update, not {self.name}')
    if self.name == 'none':
      if self.attacker is not None:
        raise ValueError(f'attack.attacker={self.attacker} is set but attack.name=none')
      return
    if self.attacker not in hospitals:
      raise ValueError(f'attack.attacker={self.attacker}: name one of the hospitals '
                       f'({", ".join(hospitals)}) for attack.name={self.name}')
    if not self.scale > 0:
      raise ValueError(f'attack.scale={self.scale}: must be positive')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """`rounds`: federated rounds (baselines: the same number of epoch blocks);
  `clients_per_round`: hospitals sampled uniformly without replacement each
  round (hospital-level DP: each joins with probability clients_per_round / n),
  0 = all; `dropouts`: hospitals of each round's cohort that train but never
  report (drawn with the seed); `min_clients`: a round with fewer reporting
  hospitals is skipped (model unchanged, nothing released); `local_epochs`:
  passes over a hospital's records per round; `batch_size`: records per SGD
  step (DP-SGD: expected records per step); `eval_every`: rounds between
  test-set evaluations (the last round is always evaluated); `privacy`:
  differential privacy; `secure_agg`: how updates reach the server;
  `personalize`: what each hospital does with the final model (fine-tuning);
  `robust`: robust aggregation; `attack`: a simulated bad hospital (research)."""
  algorithm: AlgorithmConfig = AlgorithmConfig()
  rounds: int = 50
  clients_per_round: int = 0
  dropouts: int = 0
  min_clients: int = 0
  local_epochs: int = 1
  batch_size: int = 16
  eval_every: int = 10
  seed: int = 0
  max_concurrent_computation_calls: int = -1
  privacy: PrivacyConfig = PrivacyConfig()
  secure_agg: SecureAggConfig = SecureAggConfig()
  personalize: PersonalizeConfig = PersonalizeConfig()
  robust: RobustConfig = RobustConfig()
  attack: AttackConfig = AttackConfig()

  @property
  def cohort_size(self) -> int | None:
    """Hospitals asked per round when fixed (None: all of them)."""
    return self.clients_per_round or None

  def validate(self, num_hospitals: int) -> None:
    """Checks the fields every mechanism shares; mechanisms check their own.
    Raises ValueError naming the field at fault."""
    check_level_none(self.privacy)
    if self.secure_agg.colluders is not None and (self.privacy.level, self.secure_agg.mode) != (
        'client', 'masking'):
      raise ValueError(f'secure_agg.colluders={self.secure_agg.colluders} applies to '
                       'privacy.level=client with secure_agg.mode=masking (it sizes the '
                       'hospitals\' noise shares)')
    if self.algorithm.name not in ALGORITHMS:
      raise ValueError(f'algorithm.name={self.algorithm.name!r}: choose one of {ALGORITHMS}')
    check_unused_fields(self.algorithm)
    for field in ('rounds', 'local_epochs', 'batch_size', 'eval_every'):
      if getattr(self, field) < 1:
        raise ValueError(f'{field}={getattr(self, field)}: must be at least 1')
    for field in ('client_lr', 'server_lr'):
      if not getattr(self.algorithm, field) > 0:
        raise ValueError(f'algorithm.{field}={getattr(self.algorithm, field)}: must be '
                         'positive')
    if not 0 <= self.clients_per_round <= num_hospitals:
      raise ValueError(f'clients_per_round={self.clients_per_round}: must be between 0 '
                       f'(all) and the number of hospitals, {num_hospitals}')
    cohort = self.clients_per_round or num_hospitals
    if not 0 <= self.dropouts < cohort:
      raise ValueError(f'dropouts={self.dropouts}: must be between 0 and the hospitals '
                       f'per round minus one, {cohort - 1}')
    if not 0 <= self.min_clients <= cohort:
      raise ValueError(f'min_clients={self.min_clients}: must be between 0 and the '
                       f'hospitals per round, {cohort}')
    if self.min_clients > cohort - self.dropouts:
      raise ValueError(f'min_clients={self.min_clients} with dropouts={self.dropouts} of '
                       f'{cohort} hospitals per round: every round would be skipped')
    self.personalize.validate(self.algorithm.name)
