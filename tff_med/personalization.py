"""Personalisation by fine-tuning (`personalize.method=finetune`): what a
hospital would deploy. After the last round each hospital fine-tunes the
global model on its own training records for `personalize.epochs` epochs; the
run reports global vs personalised test metrics per hospital and saves the
personalised models under personalized_model/HOSPITAL.

How each hospital fine-tunes follows the run's privacy level:

- none: Keras SGD (`model.fit`), batches of `batch_size` shuffled by the seed;
- record: DP-SGD (`tff_med.privacy.dp_sgd`, run as its TFF client work, so its
  noise and sampling draw fresh OS randomness) with the run's clip and noise
  multiplier, `epochs x ceil(n_k / batch_size)` steps at sampling rate
  batch_size / n_k. Its event is charged to the hospital's record-level ledger
  (`DpAccount`: planned in the calibration from privacy.target_epsilon and
  reserved by the privacy.max_epsilon budget from round 1 on), and the charge is
  saved with the program state *before* the fine-tuning runs: a process killed
  mid-fine-tuning and run again is charged again, never not at all;
- client (hospital level): Keras SGD without DP. The hospital-level epsilon
  covers the global model; each personalised model is a function of its own
  hospital's records without any bound, which `released` says: such a model
  stays at its hospital.

A finished run rerun in the same folder reports the personalisation its state
recorded; it does not fine-tune (nor release) again.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med import audit_log
from tff_med.config_fields import refuse_set_when_off
from tff_med.evaluation import binary_metrics, mean_over_hospitals
from tff_med.models.tff_model import loss as model_loss
from tff_med.privacy import dp_sgd

METHODS = ('none', 'finetune')
FOLDER = 'personalized_model'  # Under a run's output folder: FOLDER/HOSPITAL.


@dataclasses.dataclass(frozen=True)
class PersonalizeConfig:
  """`method`: none, or finetune (each hospital fine-tunes the final global
  model on its own training records); `epochs`: passes over those records
  (DP-SGD: epochs x ceil(n / batch_size) steps); `lr`: the fine-tuning SGD step
  size (None: algorithm.client_lr)."""
  method: str = 'none'
  epochs: int = 5
  lr: float | None = None

  def validate(self, algorithm: str) -> None:
    """ValueError naming the field at fault; `algorithm`: algorithm.name."""
    if self.method not in METHODS:
      raise ValueError(f'personalize.method={self.method!r}: choose one of {METHODS}')
    if self.method == 'none':
      refuse_set_when_off(self, 'personalize', 'method', 'personalize.method=finetune')
      return
    if self.epochs < 1:
      raise ValueError(f'personalize.epochs={self.epochs}: must be at least 1')
    if self.lr is not None and not self.lr > 0:
      raise ValueError(f'personalize.lr={self.lr}: must be positive')
    if algorithm == 'local':
      raise ValueError('personalize.method=finetune with algorithm.name=local: each local '
                       'model is already its hospital\'s own; there is no global model to '
                       'fine-tune')

  @property
  def finetune_epochs(self) -> int:
    """Epochs each hospital fine-tunes after training (0: no fine-tuning)."""
    return self.epochs if self.method == 'finetune' else 0


def _released(level: str) -> dict[str, str]:
  """What the personalisation releases, with its protection (summary's
  privacy.released)."""
  models = f'personalised models ({FOLDER}/HOSPITAL)'
  metrics = ('personalisation: global vs personalised test accuracy and AUC per hospital'
             ' (summary.json)')
  test = 'not protected: computed on held-out test records, which no epsilon covers'
  if level == 'record':
    return {models: 'accounted DP (record level): fine-tuned by DP-SGD with the run\'s clip '
                    'and noise multiplier; the event is charged to each hospital\'s epsilon',
            metrics: test}
  if level == 'client':
    return {models: 'not protected: each is fine-tuned without DP on its own hospital\'s '
                    'training records; the hospital-level epsilon covers the global model '
                    'only, so a personalised model belongs at its hospital',
            metrics: 'not protected: computed on held-out test records with models '
                     'fine-tuned without DP'}
  return {models: 'not protected', metrics: 'not protected'}


def _fields(block: dict) -> dict:
  """The summary fields of a personalisation `block`."""
  return {'personalization': block,
          'privacy': {'released': _released(block['privacy_level'])}}


def _keras_finetune(task, weights: list, hospital: str, lr: float) -> tf.keras.Model:
  """Keras SGD on `hospital`'s training records from `weights`."""
  config = task.config
  x, y = task.data.train_arrays(hospital)
  model = task.keras_model_fn()
  model.set_weights(weights)
  model.compile(optimizer=tf.keras.optimizers.SGD(lr), loss=model_loss())
  dataset = (tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)[:, None]))
             .shuffle(len(y), seed=config.seed * 100003 + config.rounds + 1)
             .batch(config.batch_size))
  model.fit(dataset, epochs=config.personalize.epochs, verbose=0)
  return model


def _dp_finetune(task, global_model: tf.keras.Model, dp, lr: float) -> dict[str, tf.keras.Model]:
  """DP-SGD on every hospital at once, as the run's DP-SGD client work (one TFF
  call, every hospital a client); checks its count of noisy steps against the
  account's."""
  config, data = task.config, task.data
  work = dp_sgd.build_dp_sgd_client_work(
      task.model_fn, model_loss, lr, config.privacy.l2_norm_clip, dp.noise_multiplier,
      config.batch_size, config.personalize.epochs, tff.learning.ClientWeighting.UNIFORM)
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in global_model.trainable_variables],
      non_trainable=[v.numpy() for v in global_model.non_trainable_variables])
  hospitals = list(data.hospitals)
  output = work.next(work.initialize(), [weights] * len(hospitals),
                     [data.train.create_tf_dataset_for_client(h).batch(data.num_train(h))
                      for h in hospitals])
  expected = sum(dp.personal_steps(h) for h in hospitals)
  if int(output.measurements['noisy_steps']) != expected:
    raise RuntimeError(f"fine-tuning took {output.measurements['noisy_steps']} DP-SGD steps, "
                       f'accounting charged {expected}')
  models = {}
  for hospital, result in zip(hospitals, output.result):
    model = task.keras_model_fn()
    tff.learning.models.ModelWeights(
        trainable=[w - u for w, u in zip(weights.trainable, result.update)],
        non_trainable=weights.non_trainable).assign_weights_to(model)
    models[hospital] = model
  return models


def personalize(plan, state, evaluation: dict, previous: dict | None,
                checkpoint: Callable[[dict, str], None], outputs=None,
                log: Callable[[str], None] = print,
                audit: Callable[..., object] | None = None) -> dict:
  """Fine-tunes the final model of `plan` (state `state`) on each hospital;
  returns the fields it adds to the summary ('personalization', and lines of
  'privacy.released').

  Args:
    plan: the run's `RoundPlan` (its `task`; `dp`, a `DpAccount`, where it has one).
    state: the plan's state after training.
    evaluation: the global model's test evaluation (`tff_med.evaluation.evaluate`).
    previous: what `checkpoint` last saved for this run (None: nothing).
    checkpoint: saves a JSON-able record with the program state (its DP ledger
      included), and an event name for the audit: called before anything of
      the fine-tuning is released.
    outputs: `RunOutputs` that saves the models (None: not saved).
    audit: `RunState.audit`, which records each saved model in the audit log
      (`model_saved`, with `audit_log.model_saved`'s hashes); None: no log.
  """
  if previous and previous.get('block') is not None:
    log('personalisation: done by an earlier session (its DP charge, if any, is in the '
        'ledger); not fine-tuned again')
    return _fields(previous['block'])
  task = plan.task
  config = task.config
  models = plan.models(state)
  if len(models) != 1:
    raise ValueError(f'personalize.method=finetune needs one global model; the plan has '
                     f'{sorted(models)}')
  global_model = next(iter(models.values()))
  lr = config.personalize.lr or config.algorithm.client_lr
  dp = getattr(plan, 'dp', None)
  level = dp.config.level if dp is not None else 'none'
  charges = (previous or {}).get('charges', 0)
  block = {'method': config.personalize.method, 'epochs': config.personalize.epochs,
           'lr': lr, 'batch_size': config.batch_size, 'privacy_level': level,
           'training': ('DP-SGD (tff_med.privacy.dp_sgd) with the run\'s clip and noise '
                        'multiplier, charged to each hospital\'s ledger' if level == 'record'
                        else 'Keras SGD, without DP'),
           'models': f'{FOLDER}/HOSPITAL'}
  if level == 'record':
    after = dp.personal_budget_exceeded()
    if after is not None:
      block['skipped'] = (f'fine-tuning could raise epsilon to {after:.4g}, above '
                          f'privacy.max_epsilon={dp.config.max_epsilon}'
                          + (f' ({charges} earlier session(s) were charged for it without '
                             'finishing)' if charges else '') + '; not fine-tuned')
      log(f"personalisation: {block['skipped']}")
      checkpoint({'charges': charges, 'block': block}, 'personalization_refused')
      return _fields(block)
    dp.record_personal()  # Write-ahead: charged and saved before anything is released.
    charges += 1
    block['charges'] = charges
    checkpoint({'charges': charges, 'block': None}, 'personalization_charged')
    personal = _dp_finetune(task, global_model, dp, lr)
  else:
    weights = global_model.get_weights()
    personal = {h: _keras_finetune(task, weights, h, lr) for h in task.data.hospitals}
  per_hospital = {}
  for hospital, model in personal.items():
    x, y = task.data.test[hospital]
    logits = model.predict(x, batch_size=1024, verbose=0)
    per_hospital[hospital] = {
        'global': {k: evaluation['per_hospital'][hospital][k] for k in ('accuracy', 'auc')},
        'personalized': binary_metrics(logits, y), 'num_test': int(len(y)),
        'num_train': task.data.num_train(hospital)}
    if level == 'record':
      per_hospital[hospital]['steps'] = dp.personal_steps(hospital)
    if outputs:
      outputs.save_model(model, hospital=hospital, folder=FOLDER)
      if audit:
        audit('model_saved', **audit_log.model_saved(
            outputs.output_dir, f'{FOLDER}/{hospital}', audit_log.keras_weights_sha256(model),
            model='personalized', hospital=hospital))
  block['per_hospital'] = per_hospital
  block['mean_hospital'] = {
      kind: mean_over_hospitals({h: m[kind] for h, m in per_hospital.items()})
      for kind in ('global', 'personalized')}
  checkpoint({'charges': charges, 'block': block}, 'personalized')
  return _fields(block)
