"""Rounds of a `tff.learning` LearningProcess, and the two aggregations that are
`tff.aggregators` factories: plain (TFF's mean, or the user's factory) and TFF's
secure sum (`secure_agg.mode=tff`)."""

import copy
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.algorithms import build_learning_process, server_optimizer
from tff_med.mechanisms.round_plan import Round, RoundPlan, RoundResult
from tff_med.mechanisms.task import Task
from tff_med.privacy import dp_sgd
from tff_med.privacy.dp_account import no_dp
from tff_med.secure_agg.tff_secure_sum import QuantizedSecureSumFactory

DatasetFn = Callable[[str, int], tf.data.Dataset]  # (hospital, round) -> its data


def scalar_leaves(structure) -> dict:
  """Numeric scalar leaves of nested TFF measurements, nesting kept."""
  leaves = {}
  for key, value in structure.items():
    if isinstance(value, dict):
      value = scalar_leaves(value)
      if value:
        leaves[key] = value
    elif np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number):
      leaves[key] = float(value)
  return leaves


def client_metrics(client_work: dict) -> dict:
  """The client work's measurements as released per round: `train` (loss,
  accuracy, AUC; None under DP) and `noisy_steps` (DP-SGD)."""
  metrics = {}
  if client_work.get('train'):
    metrics['train'] = {k: client_work['train'][k] for k in ('loss', 'accuracy', 'auc')}
  if 'noisy_steps' in client_work:
    metrics['noisy_steps'] = client_work['noisy_steps']
  return metrics


class LearningPlan(RoundPlan):
  """Each round the reporting hospitals' datasets go to `process.next` (hospitals
  that drop out never send, so they are not fed). metrics: `client_metrics` of
  the client work, `aggregator` (the aggregator's, plus `bytes_per_client`)."""

  def __init__(self, task: Task, process: tff.learning.templates.LearningProcess,
               secure_summary: dict, bytes_per_client: float,
               dataset_fn: DatasetFn | None = None, runs_empty_rounds: bool = False,
               secure_sums: bool = False):
    """`secure_summary`: summary.json's `secure_aggregation` block;
    `bytes_per_client`: one hospital's upload per round; `dataset_fn`: default
    `task.dataset`; `runs_empty_rounds`: a round nobody reports in still runs
    (central DP: its noise is released); `secure_sums`: the process uses TFF's
    secure sums."""
    self.task, self.process = task, process
    self._secure_summary, self._bytes = secure_summary, bytes_per_client
    self._dataset_fn = dataset_fn or task.dataset
    self._runs_empty_rounds = runs_empty_rounds
    self._secure_sums = secure_sums

  @property
  def secure_sums(self) -> bool:
    return self._secure_sums

  def initialize(self):
    """The process's initial state with this task's initial weights (the
    process may have been traced, and reused, with another seed's model)."""
    return self.process.set_model_weights(self.process.initialize(),
                                          self.task.initial_weights())

  def run_round(self, state, round_: Round) -> RoundResult:
    if not round_.reporting and not self._runs_empty_rounds:
      return self.skip_round(state, round_)
    output = self.process.next(state, [self._dataset_fn(h, round_.number)
                                       for h in round_.reporting])
    metrics = {**client_metrics(scalar_leaves(output.metrics['client_work'])),
               'aggregator': {**scalar_leaves(output.metrics['aggregator']),
                              'bytes_per_client': self._bytes}}
    return RoundResult(output.state, metrics, trained=round_.reporting)

  def with_client_data(self, dataset_computation, dataset_fn: Callable) -> 'LearningPlan':
    """This plan with each hospital's data built where its client work runs:
    `dataset_fn(hospital, round)` gives what is sent (e.g. a handle) and the TFF
    computation `dataset_computation` turns it into the dataset
    (`tff.simulation.compose_dataset_computation_with_learning_process`)."""
    plan = copy.copy(self)
    plan.process = tff.simulation.compose_dataset_computation_with_learning_process(
        dataset_computation, self.process)
    plan._dataset_fn = dataset_fn  # pylint: disable=protected-access
    return plan

  def get_model_weights(self, state):
    return self.process.get_model_weights(state)

  def set_model_weights(self, state, weights):
    return self.process.set_model_weights(state, weights)

  def summary(self):
    updates = ('in the clear to the server' if self._secure_summary['mode'] == 'none' else
               f"through secure_agg.mode={self._secure_summary['mode']}, no DP")
    return {'secure_aggregation': self._secure_summary,
            'privacy': no_dp(self.task.data, updates)}


def plain_aggregation(task: Task, client_work=None, dataset_fn: DatasetFn | None = None,
                      aggregator=None, weighted: bool = True, metrics_aggregator=None,
                      runs_empty_rounds: bool = False) -> LearningPlan:
  """float32 updates in the clear to the server, combined by `aggregator` (a
  `tff.aggregators` factory, weighted unless `weighted` is False; default TFF's
  mean). `client_work`: e.g. DP-SGD's (None: the algorithm's own local
  training, with TFF's `metrics_aggregator`)."""
  secure = task.config.secure_agg
  num_params = task.keras_model_fn().count_params()
  return LearningPlan(task, _process(task, client_work, aggregator, weighted,
                                     metrics_aggregator),
                      {'mode': 'none', 'bytes_per_client': secure.bytes_per_client(num_params)},
                      secure.bytes_per_client(num_params), dataset_fn, runs_empty_rounds)


def tff_secure_sum_aggregation(task: Task, client_work=None,
                               dataset_fn: DatasetFn | None = None,
                               aggregator=None) -> LearningPlan:
  """TFF's secure sum of quantised updates, in TFF's mean (`secure_agg.mode=tff`)."""
  if aggregator is not None:
    raise ValueError('secure_agg.mode=tff sets the aggregator itself (a secure sum in '
                     'TFF\'s mean); a user aggregator cannot be combined with it: use '
                     'secure_agg.mode=none, or put the secure sum inside your factory')
  secure = task.config.secure_agg
  # Quantise for the largest possible cohort, so that no sum can wrap.
  factory = tff.aggregators.MeanFactory(
      value_sum_factory=QuantizedSecureSumFactory(secure.quantizer(len(task.data.hospitals))))
  num_params = task.keras_model_fn().count_params()
  return LearningPlan(task, _process(task, client_work, factory),
                      {'mode': 'tff', 'bits': secure.bits, 'clip': secure.clip,
                       'bytes_per_client': secure.bytes_per_client(num_params)},
                      secure.bytes_per_client(num_params), dataset_fn, secure_sums=True)


# The algorithms' own processes with TFF's mean (no DP, no secure sum, no user or
# robust aggregator), by (algorithm config, model key, weighted): the runs of a
# grid that differ only in their seed's data and initial weights share one
# instead of tracing it again (3.6 s for heart_disease's logreg).
# The oldest is dropped past _MAX_PROCESSES.
_PROCESSES: dict[tuple, tff.learning.templates.LearningProcess] = {}
_MAX_PROCESSES = 32


def _process(task: Task, client_work, aggregator, weighted=True, metrics_aggregator=None):
  """The algorithm's own process (`client_work` None), or TFF's broadcast +
  `client_work` + `aggregator` (weighted) + the algorithm's server optimizer."""
  if client_work is None:
    key = (task.config.algorithm, task.model_key, weighted)
    reusable = task.model_key is not None and aggregator is None and metrics_aggregator is None
    if reusable and key in _PROCESSES:
      return _PROCESSES[key]
    process = build_learning_process(task.config.algorithm, task.model_fn, aggregator,
                                     weighted, metrics_aggregator)
    if reusable:
      if len(_PROCESSES) >= _MAX_PROCESSES:
        del _PROCESSES[next(iter(_PROCESSES))]
      _PROCESSES[key] = process
    return process
  return dp_sgd.build_dp_sgd_learning_process(
      task.model_fn, client_work, server_optimizer(task.config.algorithm), aggregator)
