"""The run's mechanism from its config: the one table of which privacy level
goes with which aggregation, and the plan each pair builds.

Aggregations (how updates reach the server) are functions
`(task, client_work, dataset_fn, aggregator) -> RoundPlan`; privacy mechanisms
wrap the plan an aggregation builds with their own client work or noise. Each
mechanism validates its own fields in its constructor.
"""

from collections.abc import Callable, Mapping

from tff_med.algorithms import BASELINES
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData
from tff_med.mechanisms.attacks import attacked
from tff_med.mechanisms.baselines import BaselinePlan
from tff_med.mechanisms.hospital_dp import HospitalLevelDp
from tff_med.mechanisms.learning import plain_aggregation, tff_secure_sum_aggregation
from tff_med.mechanisms.masking import masking_aggregation
from tff_med.mechanisms.record_dp import RecordLevelDp
from tff_med.mechanisms.robust import robust_factory
from tff_med.mechanisms.round_plan import RoundPlan
from tff_med.mechanisms.task import KerasModelFn, Task
from tff_med.remote import plan as remote_plan
from tff_med.remote.context import Connection

AGGREGATIONS = {'none': plain_aggregation, 'tff': tff_secure_sum_aggregation,
                'masking': masking_aggregation}

# (privacy.level, secure_agg.mode) -> (task, aggregation, aggregator, log) -> plan, or why
# it is refused; `aggregation`: the mode's builder of AGGREGATIONS (with a simulated
# attacker: wrapped by `attacks.attacked`).
_PLANS: dict[tuple[str, str], Callable[..., RoundPlan] | str] = {
    **{('none', mode): (lambda task, build, aggregator, log: build(task, aggregator=aggregator))
       for mode in AGGREGATIONS},
    **{('record', mode): (lambda task, build, aggregator, log: RecordLevelDp(
        task, build, aggregator, log)) for mode in AGGREGATIONS},
    ('client', 'none'): lambda task, build, aggregator, log: HospitalLevelDp(
        task, masking=False, aggregator=aggregator, log=log, central=build),
    ('client', 'masking'): lambda task, build, aggregator, log: HospitalLevelDp(
        task, masking=True, aggregator=aggregator, log=log),
    ('client', 'tff'): (
        'secure_agg.mode=tff with privacy.level=client is refused: TFF\'s distributed-DP '
        'aggregator estimates its clip from a count of clipped hospitals that it noises on '
        'the server after the secure sum, so the server would see that count exactly (and '
        'it does not build in TFF 0.87 here); use secure_agg.mode=masking'),
}


def _robust_aggregator(config: TrainConfig, aggregator, num_hospitals: int):
  """The aggregator with robust.* applied (the user's when robust.name=none),
  refusing combinations where the server cannot see each hospital's update and a
  trimmed mean that would drop every update of a round."""
  robust = robust_factory(config.robust)
  if robust is None:
    return aggregator
  field = f'robust.name={config.robust.name}'
  reporting = (config.clients_per_round or num_hospitals) - config.dropouts
  if config.robust.name == 'trimmed_mean' and reporting <= 2 * config.robust.trim:
    raise ValueError(f'{field} with robust.trim={config.robust.trim} drops {config.robust.trim} '
                     f'update(s) at each end: it needs more than {2 * config.robust.trim} '
                     f'hospitals reporting per round, and a round has {reporting}')
  if aggregator is not None:
    raise ValueError(f'{field} sets the aggregator: a user aggregator cannot be combined '
                     'with it (put the robust factory inside yours)')
  if config.secure_agg.mode != 'none':
    raise ValueError(f'{field} needs each hospital\'s update at the server; '
                     f'secure_agg.mode={config.secure_agg.mode} gives it only their sum')
  if config.privacy.level == 'client':
    raise ValueError(f'{field} with privacy.level=client: DP-FedAvg already bounds each '
                     'hospital\'s update (privacy.l2_norm_clip) and its aggregator is the DP '
                     'one, whose noise an order statistic would not account for')
  return robust


def build_plan(data: FederatedData, keras_model_fn: KerasModelFn, config: TrainConfig,
               aggregator=None, log: Callable[[str], None] = print,
               connections: Mapping[str, Connection] | None = None) -> RoundPlan:
  """The plan of `config`, validated and (with privacy.target_epsilon) calibrated.

  Args:
    keras_model_fn: no-arg function returning a fresh uncompiled Keras model with
      one logit output, [B, 1]; same initial weights on every call.
    aggregator: the user's `tff.aggregators` weighted factory for the hospitals'
      updates (federated algorithms; refused where a mechanism aggregates itself).
    log: receives calibration lines.
    connections: hospital -> its node's connection (`remote.context.connect`):
      the rounds run on the nodes (`remote.plan.on_nodes`); None: in process.

  Raises:
    ValueError: naming the config field at fault, before any training.
  """
  config.validate(len(data.hospitals))
  if connections is not None:
    remote_plan.check_config(config)
  task = Task(data, keras_model_fn, config)
  if config.algorithm.name in BASELINES:
    for field, value, default in (('privacy.level', config.privacy.level, 'none'),
                                  ('secure_agg.mode', config.secure_agg.mode, 'none')):
      if value != default:
        raise ValueError(f'{field}={value} needs a federated algorithm.name, not '
                         f'{config.algorithm.name}')
    if (aggregator is not None or config.dropouts or config.min_clients
        or config.robust.name != 'none' or config.attack.name != 'none'):
      raise ValueError(f'algorithm.name={config.algorithm.name} is a baseline: it takes no '
                       f'aggregator, robust.name, attack.name, dropouts={config.dropouts} or '
                       f'min_clients={config.min_clients} (every hospital trains every round, '
                       'alone or pooled)')
    return BaselinePlan(task, pooled=config.algorithm.name == 'pooled')
  config.secure_agg.validate(config.clients_per_round or len(data.hospitals),
                             config.algorithm.client_weighting)
  key = (config.privacy.level, config.secure_agg.mode)
  if key not in _PLANS:
    raise ValueError(f'privacy.level={config.privacy.level!r} or secure_agg.mode='
                     f'{config.secure_agg.mode!r}: choose from {sorted(_PLANS)}')
  plan = _PLANS[key]
  if isinstance(plan, str):
    raise ValueError(plan)
  aggregator = _robust_aggregator(config, aggregator, len(data.hospitals))
  config.attack.validate(data.hospitals)
  aggregation = AGGREGATIONS[config.secure_agg.mode]
  if connections is not None:
    aggregation = remote_plan.on_nodes(aggregation, connections)
  if config.attack.name != 'none':
    if config.privacy.level == 'client':
      raise ValueError(f'attack.name={config.attack.name} is not simulated with '
                       'privacy.level=client (its DP aggregation builds its own client work)')
    aggregation = attacked(aggregation, config.attack)
  return plan(task, aggregation, aggregator, log)
