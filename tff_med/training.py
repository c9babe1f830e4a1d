"""One training run: a federated algorithm or a baseline, with evaluation and outputs.

`run(data, keras_model_fn, config)` trains, evaluates every `eval_every` rounds and
at the end, writes `tff_med.outputs` when given an output folder, and returns the
summary dict that `summary.json` holds. Baselines use the same model and budget:
`local` trains one model per hospital on its own records, `pooled` one model on
all hospitals' records (what privacy law forbids); each trains `local_epochs`
epochs of SGD at `client_lr` per round.
"""

import dataclasses
import math
import time
from collections.abc import Callable

import dp_accounting
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med import runtime
from tff_med.algorithms import (ALGORITHMS, BASELINES, AlgorithmConfig, build_learning_process,
                                client_optimizer, server_optimizer)
from tff_med.data.federated_data import FederatedData
from tff_med.evaluation import evaluate
from tff_med.models.tff_model import loss as model_loss
from tff_med.models.tff_model import tff_model_fn
from tff_med.outputs import RunOutputs
from tff_med.privacy.dp_training import DpTraining, PrivacyConfig
from tff_med.privacy.training_metrics import no_training_metrics
from tff_med.secure_agg.config import SecureAggConfig
from tff_med.secure_agg.masked_process import MaskedLearningProcess
from tff_med.secure_agg.tff_secure_sum import QuantizedSecureSumFactory

KerasModelFn = Callable[[], tf.keras.Model]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """`rounds`: federated rounds (baselines: the same number of epoch blocks);
  `clients_per_round`: hospitals sampled uniformly without replacement each
  round (with --dp=client: each joins with probability clients_per_round / n),
  0 = all; `local_epochs`: passes over a hospital's records per round;
  `batch_size`: records per SGD step (DP-SGD: expected records per step);
  `eval_every`: rounds between test-set evaluations (the last round is always
  evaluated); `privacy`: differential privacy (`tff_med.privacy`); `secure_agg`:
  how updates reach the server (`tff_med.secure_agg`)."""
  algorithm: AlgorithmConfig = AlgorithmConfig()
  rounds: int = 50
  clients_per_round: int = 0
  local_epochs: int = 1
  batch_size: int = 16
  eval_every: int = 10
  seed: int = 0
  max_concurrent_computation_calls: int = -1
  privacy: PrivacyConfig = PrivacyConfig()
  secure_agg: SecureAggConfig = SecureAggConfig()

  def validate(self, num_hospitals: int) -> None:
    """Raises ValueError naming the flag at fault."""
    if self.algorithm.name not in ALGORITHMS:
      raise ValueError(f'--algorithm={self.algorithm.name!r}: choose one of {ALGORITHMS}')
    for flag in ('rounds', 'local_epochs', 'batch_size', 'eval_every'):
      if getattr(self, flag) < 1:
        raise ValueError(f'--{flag}={getattr(self, flag)}: must be at least 1')
    for flag in ('client_lr', 'server_lr'):
      if not getattr(self.algorithm, flag) > 0:
        raise ValueError(f'--{flag}={getattr(self.algorithm, flag)}: must be positive')
    if not 0 <= self.clients_per_round <= num_hospitals:
      raise ValueError(f'--clients_per_round={self.clients_per_round}: must be between 0 '
                       f'(all) and the number of hospitals, {num_hospitals}')
    if self.privacy.level != 'none' and self.algorithm.name in BASELINES:
      raise ValueError(f'--dp={self.privacy.level} needs a federated --algorithm, not '
                       f'{self.algorithm.name}')
    if self.secure_agg.mode != 'none':
      if self.algorithm.name in BASELINES:
        raise ValueError(f'--secure_agg={self.secure_agg.mode} needs a federated '
                         f'--algorithm, not {self.algorithm.name}')
      if self.secure_agg.mode == 'masking' and self.algorithm.name == 'fedprox':
        raise ValueError('--secure_agg=masking trains with plain local SGD: use '
                         '--algorithm=fedavg, fedadam, fedyogi or fedadagrad')
      self.secure_agg.validate(self.clients_per_round or num_hospitals,
                               self.algorithm.client_weighting)
      if self.secure_agg.mode == 'tff' and self.privacy.level == 'client':
        raise ValueError(
            '--secure_agg=tff with --dp=client is refused: TFF\'s distributed-DP aggregator '
            'estimates its clip from a count of clipped hospitals that it noises on the '
            'server after the secure sum, so the server would see that count exactly (and '
            'it does not build in TFF 0.87 here); use --secure_agg=masking')
      if (self.secure_agg.mode == 'masking' and self.privacy.level == 'client'
          and 0 < self.clients_per_round < num_hospitals and self.secure_agg.threshold):
        raise ValueError(f'--secagg_threshold={self.secure_agg.threshold} with --dp=client '
                         'and --clients_per_round: cohort sizes vary, so the threshold must '
                         'follow each cohort (leave --secagg_threshold at 0)')
      if (self.secure_agg.mode == 'masking' and self.privacy.level == 'client'
          and self.privacy.clipping == 'adaptive'):
        raise ValueError('--secure_agg=masking with --dp=client clips each hospital\'s '
                         'update at a fixed --l2_norm_clip: use --dp_clipping=fixed')

  def build_dp(self, data: FederatedData, log: Callable[[str], None] = print
               ) -> DpTraining | None:
    """The run's DP set-up (calibrated), or None without DP. Raises ValueError
    naming the flag at fault."""
    if self.privacy.level == 'none':
      return None
    cohort_size = self.clients_per_round or len(data.hospitals)
    aggregation = {'none': 'central'}.get(self.secure_agg.mode, self.secure_agg.mode)
    dp = DpTraining(self.privacy, self.algorithm, data, self.rounds,
                    self.clients_per_round, self.batch_size, self.local_epochs, log,
                    aggregation=aggregation,
                    colluders=(self.secure_agg.colluders_for(
                        self.secure_agg.threshold_for(cohort_size))
                               if aggregation == 'masking' else 0))
    return dp


def client_dataset(data: FederatedData, hospital: str, config: TrainConfig,
                   shuffle_seed: int) -> tf.data.Dataset:
  """A hospital's training records for one round: `local_epochs` passes, each
  reshuffled and cut into batches of `batch_size` (the last one may be smaller)."""
  return (data.train.create_tf_dataset_for_client(hospital)
          .shuffle(data.num_train(hospital), seed=shuffle_seed)
          .batch(config.batch_size)
          .repeat(config.local_epochs))


def _flat_eval(evaluation: dict) -> dict:
  """Evaluation in the nested form released to TensorBoard/CSV."""
  return {'per_hospital': {h: {'accuracy': m['accuracy'], 'auc': m['auc']}
                           for h, m in evaluation['per_hospital'].items()},
          'mean_hospital': evaluation['mean_hospital'],
          'pooled': evaluation['pooled']}


class _Progress:
  """Prints one line per round: round, training loss (where released), elapsed
  and estimated time left. Where timing would reveal a secret cohort (`timed`
  False) the lines carry no times and are held until `flush`."""

  def __init__(self, rounds: int, log: Callable[[str], None], timed: bool = True):
    self._rounds, self._start = rounds, time.monotonic()
    self.timed, self._held, self._out = timed, [], log
    self._log = log if timed else self._held.append

  def flush(self) -> None:
    for line in self._held:
      self._out(line)
    self._held.clear()

  def log(self, line: str) -> None:
    self._log(line)

  def elapsed(self) -> float:
    return time.monotonic() - self._start

  def round_done(self, round_num: int, loss: float | None, evaluation: dict | None) -> None:
    elapsed = self.elapsed()
    left = elapsed / round_num * (self._rounds - round_num)
    line = (f'round {round_num:4d}/{self._rounds}  '
            + (f'loss {loss:.4f}  ' if loss is not None else '')
            + (f'elapsed {elapsed:6.1f}s  left ~{left:6.1f}s' if self.timed else ''))
    if evaluation:
      line += (f"  pooled acc {evaluation['pooled']['accuracy']:.3f} "
               f"auc {evaluation['pooled']['auc']:.3f}")
    self._log(line)


def _scalar_leaves(structure) -> dict:
  """Numeric scalar leaves of nested TFF measurements, nesting kept."""
  leaves = {}
  for key, value in structure.items():
    if isinstance(value, dict):
      value = _scalar_leaves(value)
      if value:
        leaves[key] = value
    elif np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number):
      leaves[key] = float(value)
  return leaves


def _is_eval_round(round_num: int, config: TrainConfig) -> bool:
  return round_num % config.eval_every == 0 or round_num == config.rounds


def _build_processes(config, model_fn, dp, model_aggregator, num_hospitals):
  """(process for noised or ordinary rounds, process for un-noised rounds or None)."""
  secure = config.secure_agg
  if dp and dp.config.level == 'client':  # Every round sized for the same coalition.
    secure = dataclasses.replace(secure, colluders=dp.colluders)
  if secure.mode == 'masking':
    def masked(client_work, clip=None, noise_multiplier=0.0):
      return MaskedLearningProcess(model_fn, client_work, server_optimizer(config.algorithm),
                                   secure, num_hospitals, clip, noise_multiplier)
    if dp and dp.config.level == 'record':
      return (masked(dp.client_work(model_fn)),
              None if dp.config.schedule == 'every_round'
              else masked(dp.client_work(model_fn, noised=False)))
    plain_work = tff.learning.templates.build_model_delta_client_work(
        model_fn, client_optimizer(config.algorithm), tff.learning.ClientWeighting.UNIFORM,
        metrics_aggregator=no_training_metrics if dp else None)
    if dp:  # Hospital level: distributed discrete Gaussian noise, added before masking.
      return masked(plain_work, dp.config.l2_norm_clip, dp.noise_multiplier), None
    return masked(plain_work), None
  if secure.mode == 'tff':
    # Quantise for the largest possible cohort, so that no sum can wrap.
    model_aggregator = tff.aggregators.MeanFactory(
        value_sum_factory=QuantizedSecureSumFactory(secure.quantizer(num_hospitals)))
  if dp:
    return dp.build_processes(model_fn, model_aggregator)
  return build_learning_process(config.algorithm, model_fn, model_aggregator), None


def _server_event(config, dp, process, aggregator, cohort):
  """Hospital-level DP event of a secure-aggregation round against the server
  (None: central DP, whose event TFF's aggregator state holds)."""
  if not dp or dp.config.level != 'client' or config.secure_agg.mode == 'none':
    return None
  if aggregator['aborted']:
    return dp_accounting.NoOpDpEvent()  # Nothing was released.
  return dp_accounting.GaussianDpEvent(
      process.round_noise_multiplier(aggregator['survivors'], len(cohort)))


def _train_federated(data, keras_model_fn, config, outputs, model_aggregator, progress, dp):
  """Returns (final global Keras model, last evaluation, stop record or None,
  secure aggregation record or None)."""
  probe = client_dataset(data, data.hospitals[0], config, 0)
  model_fn = tff_model_fn(keras_model_fn, probe.element_spec)
  process, plain_process = _build_processes(config, model_fn, dp, model_aggregator,
                                            len(data.hospitals))
  rng = np.random.default_rng(config.seed)
  global_model = keras_model_fn()
  wire_bytes = config.secure_agg.bytes_per_client(global_model.count_params())
  secure_record = {'bytes_per_client': [], 'aborted_rounds': 0, 'dropouts': 0}
  state = process.initialize()
  evaluation, stopped, held = None, None, []
  for round_num in range(1, config.rounds + 1):
    round_start = time.monotonic()
    cohort = list(data.hospitals)
    if dp and dp.config.level == 'client':
      cohort = dp.cohort(cohort)
    elif 0 < config.clients_per_round < len(cohort):
      cohort = sorted(rng.choice(cohort, config.clients_per_round, replace=False).tolist())
    if dp and (after := dp.would_exceed_budget(cohort, round_num, state)) is not None:
      stopped = {'stopped_early': True, 'rounds_completed': round_num - 1,
                 'reason': f'round {round_num} could raise epsilon to {after:.4g} (its worst '
                           f'case), above --max_epsilon={dp.config.max_epsilon}; stopped '
                           'before it'}
      progress.log(f"privacy budget: {stopped['reason']}")
      break
    metrics = {'clients_in_round': len(cohort)}
    client_work = {}
    if cohort or (dp and dp.noises_empty_rounds):
      round_process = process if not dp or dp.is_noised(round_num) else plain_process
      datasets = [dp.client_dataset(h) if dp and dp.config.level == 'record' else
                  client_dataset(data, h, config, shuffle_seed=config.seed * 100003 + round_num)
                  for h in cohort]
      if isinstance(round_process, MaskedLearningProcess):
        dropouts = rng.choice(cohort, min(config.secure_agg.dropouts, len(cohort)),
                              replace=False).tolist()
        output = round_process.next(state, datasets, cohort, dropouts)
        aggregator = output.metrics['aggregator']
        secure_record['aborted_rounds'] += aggregator['aborted']
        secure_record['dropouts'] += len(dropouts)
        if aggregator['aborted']:
          progress.log(f"round {round_num}: secure aggregation aborted, model unchanged: "
                       f"{aggregator.pop('reason')}")
        else:
          secure_record['bytes_per_client'].append(aggregator['bytes_per_client'])
          if round_process.planned_noise_multiplier:
            secure_record['noise_approximation_tau'] = max(
                secure_record.get('noise_approximation_tau', 0.0),
                round_process.tau(aggregator['survivors'], len(cohort)))
        client_work = output.metrics['client_work_unprotected']
      else:
        output = round_process.next(state, datasets)
        output.metrics['aggregator']['bytes_per_client'] = wire_bytes
        secure_record['bytes_per_client'].append(wire_bytes)
        client_work = output.metrics['client_work']
      state = output.state
      if client_work.get('train'):  # None reach the server under DP.
        metrics['train'] = {k: float(client_work['train'][k])
                            for k in ('loss', 'accuracy', 'auc')}
      metrics['aggregator'] = _scalar_leaves(output.metrics['aggregator'])
    metrics['round_seconds'] = time.monotonic() - round_start
    if dp:
      dp.record_round(cohort, round_num, state, noisy_steps=client_work.get('noisy_steps'),
                      server_event=_server_event(config, dp, round_process,
                                                 metrics['aggregator'], cohort)
                      if cohort else None)
      metrics = dp.releasable(metrics)
      metrics['privacy'] = dp.epsilons()
    evaluation = None
    if _is_eval_round(round_num, config):
      process.get_model_weights(state).assign_weights_to(global_model)
      evaluation = evaluate(global_model, data)
      metrics['eval'] = _flat_eval(evaluation)
    if outputs:
      held.append((metrics, round_num))
      if progress.timed:  # Else held to the end: release times would reveal the cohort.
        outputs.release(*held.pop())
    progress.round_done(round_num, metrics.get('train', {}).get('loss'), evaluation)
  for metrics, round_num in held:
    outputs.release(metrics, round_num)
  progress.flush()
  if evaluation is None:  # Stopped early: evaluate the model as it stands.
    process.get_model_weights(state).assign_weights_to(global_model)
    evaluation = evaluate(global_model, data)
  return global_model, evaluation, stopped, secure_record


def _train_baseline(data, keras_model_fn, config, outputs, progress):
  """`local` or `pooled`. Returns {name: Keras model} and the last evaluation.

  `local`: per_hospital holds each hospital's own model on its own test set;
  mean_hospital their mean; pooled the mean over hospitals' models of their
  pooled-test metrics; `local_models` each model on every test set.
  """
  if config.algorithm.name == 'local':
    train_sets = {h: data.train_arrays(h) for h in data.hospitals}
  else:
    train_sets = {'pooled': data.pooled('train')}
  models = {}
  for name in train_sets:
    models[name] = keras_model_fn()
    models[name].compile(optimizer=tf.keras.optimizers.SGD(config.algorithm.client_lr),
                         loss=model_loss())
  tf.keras.utils.set_random_seed(config.seed)
  evaluation = None
  for round_num in range(1, config.rounds + 1):
    round_start = time.monotonic()
    losses = []
    for name, (x, y) in train_sets.items():
      dataset = (tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)[:, None]))
                 .shuffle(len(y), seed=config.seed * 100003 + round_num).batch(config.batch_size))
      history = models[name].fit(dataset, epochs=config.local_epochs, verbose=0)
      losses.append(history.history['loss'][-1])
    metrics = {'train': {'loss': float(np.mean(losses))},
               'round_seconds': time.monotonic() - round_start}
    evaluation = None
    if _is_eval_round(round_num, config):
      evaluation = _baseline_evaluation(models, data)
      metrics['eval'] = _flat_eval(evaluation)
    if outputs:
      outputs.release(metrics, round_num)
    progress.round_done(round_num, metrics['train']['loss'], evaluation)
  return models, evaluation


def _baseline_evaluation(models: dict, data: FederatedData) -> dict:
  if 'pooled' in models:
    return evaluate(models['pooled'], data)
  local = {h: evaluate(models[h], data) for h in data.hospitals}
  per_hospital = {h: local[h]['per_hospital'][h] for h in data.hospitals}
  return {
      'per_hospital': per_hospital,
      'mean_hospital': {k: float(np.nanmean([m[k] for m in per_hospital.values()]))
                        for k in ('accuracy', 'auc')},
      'pooled': {k: float(np.nanmean([local[h]['pooled'][k] for h in data.hospitals]))
                 for k in ('accuracy', 'auc')},
      'local_models': local,
  }


def _secure_summary(secure: SecureAggConfig, record: dict) -> dict:
  sent = record['bytes_per_client']
  return {'mode': secure.mode,
          **({'bits': secure.bits, 'clip': secure.clip} if secure.mode != 'none' else {}),
          **({'threshold': secure.threshold or 'max(2, ceil(2n/3))',
              'colluders': 't-2' if secure.colluders is None else secure.colluders,
              'dropouts': record['dropouts'],
              'aborted_rounds': record['aborted_rounds']} if secure.mode == 'masking' else {}),
          **({'noise_approximation_tau': record['noise_approximation_tau']}
             if 'noise_approximation_tau' in record else {}),
          'bytes_per_client': float(np.mean(sent)) if sent else math.nan}


def _no_privacy(config: TrainConfig, data: FederatedData) -> dict:
  """The privacy block of a run without DP: no epsilon, and what it releases."""
  in_clear = ('in the clear to the server' if config.secure_agg.mode == 'none' else
              f'through --secure_agg={config.secure_agg.mode}, no DP')
  return {'level': 'none', 'epsilon': math.inf,
          'statement': 'no differential privacy: the model, its training metrics and the '
                       'hospitals\' updates depend on every record without any bound',
          'released': {
              'model updates': f'not protected ({in_clear})',
              'model weights, training and test metrics, hospital names and sizes':
                  'not protected',
              'preprocessing': f"not protected: {data.preprocessing.get('source', '')}"}}


def run(data: FederatedData, keras_model_fn: KerasModelFn, config: TrainConfig,
        output_dir: str | None = None,
        model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
        log: Callable[[str], None] = print, extra_summary: dict | None = None,
        dp: DpTraining | None = None) -> dict:
  """Trains, evaluates and (with `output_dir`) writes outputs; returns the summary.

  Args:
    data: the hospitals' data.
    keras_model_fn: no-arg function returning a fresh uncompiled Keras model
      with one logit output, shape [B, 1]; same initial weights on every call.
    config: the run's settings; validated before any training.
    output_dir: where TensorBoard events, metrics.csv, saved_model/ and
      summary.json go; None writes nothing.
    model_aggregator: `tff.aggregators` weighted factory for the client model
      deltas (federated algorithms only; default TFF's weighted mean).
    log: receives the per-round progress lines.
    extra_summary: merged into the summary (e.g. dataset options).
    dp: `config.build_dp(data)` when already built (it calibrates); built here
      otherwise.
  """
  config.validate(len(data.hospitals))
  if model_aggregator is not None and (config.algorithm.name in BASELINES
                                       or config.privacy.level != 'none'):
    raise ValueError('a model_aggregator needs a federated algorithm without --dp (DP '
                     'runs choose their own aggregation)')
  dp = dp or config.build_dp(data, log)
  outputs = RunOutputs(output_dir) if output_dir else None
  progress = _Progress(config.rounds, log, timed=not (dp and dp.hides_cohort))
  stopped, secure_record = None, None
  if config.algorithm.name in BASELINES:
    models, evaluation = _train_baseline(data, keras_model_fn, config, outputs, progress)
  else:
    with runtime.execution_context(
        secure_sums=config.secure_agg.mode == 'tff',
        max_concurrent_computation_calls=config.max_concurrent_computation_calls):
      model, evaluation, stopped, secure_record = _train_federated(
          data, keras_model_fn, config, outputs, model_aggregator, progress, dp)
    models = {'global': model}
  summary = {
      'algorithm': config.algorithm.name,
      'dataset': data.name,
      'rounds': config.rounds,
      'seed': config.seed,
      'hospitals': list(data.hospitals),
      'data_description': data.description,
      'config': dataclasses.asdict(config),
      'pooled': evaluation['pooled'],
      'mean_hospital': evaluation['mean_hospital'],
      'per_hospital': {h: {**evaluation['per_hospital'][h], 'num_train': data.num_train(h)}
                       for h in data.hospitals},
      **({'local_models': evaluation['local_models']} if 'local_models' in evaluation else {}),
      'privacy': ({**dp.report(), 'released': dp.released()} if dp
                  else _no_privacy(config, data)),
      **(stopped or ({'stopped_early': False} if dp else {})),
      **({'secure_aggregation': _secure_summary(config.secure_agg, secure_record)}
         if secure_record else {}),
      **(extra_summary or {}),
      **({'wall_seconds': progress.elapsed()} if progress.timed else {}),
  }
  if outputs:
    for name, model in models.items():
      outputs.save_model(model, None if len(models) == 1 else name)
    outputs.write_summary(summary)
  return summary
