"""Audits a finished training run: reloads its data and saved model from its
output folder, attacks the global model per hospital and overall, and, for
comparison, one hospital's local-only model trained with the run's settings.

Writes `audit.json` beside summary.json and the headline numbers to the run's
TensorBoard folder (`audit/...` at the run's last round).
"""

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff

from tff_med import data as data_lib
from tff_med import serving
from tff_med import training
from tff_med.algorithms import AlgorithmConfig
from tff_med.audit.epsilon_bound import check_parameters
from tff_med.audit.membership import DEFAULT_ALPHA, audit, audit_local_model, data_delta
from tff_med.models import ModelConfig, build_keras_model
from tff_med.outputs import TENSORBOARD_DIR, write_json

# The best attack's (by AUC) metrics, then the audit set's epsilon lower bound.
HEADLINE = ('auc', 'advantage', 'tpr_at_fpr_1pct', 'epsilon_lower_bound')


def _reload(run_dir: str, data_dir: str | None):
  """(summary, data, keras_model_fn) of a run written by tff_med.training."""
  path = os.path.join(run_dir, 'summary.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'--run_dir={run_dir}: no summary.json (not a finished run)')
  with open(path) as f:
    summary = json.load(f)
  if 'data_config' not in summary:
    raise ValueError(f'--run_dir={run_dir}: summary.json lacks data_config; re-run it '
                     'with experiments.train')
  data_config = data_lib.DataConfig(**{
      k: tuple(v) if isinstance(v, list) else v for k, v in summary['data_config'].items()})
  if data_dir:
    data_config = dataclasses.replace(data_config, data_dir=data_dir)
  data = data_lib.load(data_config)
  model_config = ModelConfig(**summary['model_config'])
  keras_model_fn = lambda: build_keras_model(model_config, data.feature_shape,
                                             data_config.seed)
  return summary, data, keras_model_fn


def _local_only_model(summary: dict, data, keras_model_fn, hospital: str,
                      work_dir: str) -> tf.keras.Model:
  """`hospital`'s model trained on its records alone, with the run's budget."""
  one = data_lib.FederatedData.from_arrays(
      data.name, {hospital: data.train_arrays(hospital)}, {hospital: data.test[hospital]})
  config = summary['config']
  training.run(one, keras_model_fn, training.TrainConfig(
      AlgorithmConfig('local', client_lr=config['algorithm']['client_lr']),
      rounds=config['rounds'], local_epochs=config['local_epochs'],
      batch_size=config['batch_size'], seed=config['seed']),
               output_dir=work_dir, log=lambda line: None)
  return tf.keras.models.load_model(serving.keras_model_path(os.path.join(work_dir, 'saved_model')))


def headline(result: dict) -> dict:
  """The best attack's AUC, advantage and TPR at 1% FPR, and the audit set's
  epsilon lower bound."""
  best = result['best'] or {}
  return {k: result[k] if k == 'epsilon_lower_bound' else best.get(k, float('nan'))
          for k in HEADLINE}


def audit_run(run_dir: str, data_dir: str | None = None, local_hospital: str | None = '',
              log: Callable[[str], None] = print, delta: float | None = None,
              alpha: float = DEFAULT_ALPHA) -> dict:
  """Audits the run in `run_dir`; returns and writes audit.json.

  Args:
    data_dir: overrides the data folder recorded in the run.
    local_hospital: hospital whose local-only model is audited for comparison;
      '' = the run's first hospital, None = none.
    delta: delta of the epsilon lower bounds; None = the run's accountant delta
      for a DP run, else the default record delta of its data (membership.data_delta).
    alpha: the bounds hold with confidence 1 - alpha.
  """
  summary, data, keras_model_fn = _reload(run_dir, data_dir)
  if summary['algorithm'] == 'local':
    raise ValueError(f'--run_dir={run_dir} holds local-only models, not a global model: '
                     'audit a federated or pooled run')
  model = tf.keras.models.load_model(serving.keras_model_path(os.path.join(run_dir, 'saved_model')))
  log(f'auditing {run_dir}: {summary["algorithm"]} on {data.name}')
  if delta is None:
    delta = (summary.get('privacy') or {}).get('delta') or data_delta(data)
  check_parameters(delta, alpha)
  result = {'run_dir': run_dir, 'algorithm': summary['algorithm'], 'dataset': data.name,
            'privacy': summary.get('privacy'),
            'secure_aggregation': summary.get('secure_aggregation'),
            'epsilon_lower_bound_delta': delta,
            'global_model': audit(model, data, seed=summary['seed'], delta=delta, alpha=alpha)}
  if local_hospital is not None:
    hospital = local_hospital or data.hospitals[0]
    if hospital not in data.hospitals:
      raise ValueError(f'--local_hospital={hospital}: not one of {data.hospitals}')
    local = _local_only_model(summary, data, keras_model_fn, hospital,
                              os.path.join(run_dir, f'audit_local_{hospital}'))
    result['local_model'] = {'hospital': hospital,
                             **audit_local_model(local, data, hospital, seed=summary['seed'],
                                                 delta=delta, alpha=alpha)}
  write_json(os.path.join(run_dir, 'audit.json'), result)
  scalars = {'overall': headline(result['global_model']['overall']),
             'per_hospital': {h: headline(r)
                              for h, r in result['global_model']['per_hospital'].items()}}
  if 'local_model' in result:
    scalars['local_model'] = headline(result['local_model'])
  asyncio.run(tff.program.TensorBoardReleaseManager(os.path.join(run_dir, TENSORBOARD_DIR))
              .release({'audit': scalars}, key=summary['rounds']))
  return result


def format_result(result: dict) -> str:
  """A small text table of the best attack per hospital, overall and local model."""
  rows = [('overall', result['global_model']['overall'])]
  rows += list(result['global_model']['per_hospital'].items())
  if 'local_model' in result:
    rows.append((f"local-only model ({result['local_model']['hospital']})",
                 result['local_model']))
  lines = [f"{'target':32s} " + ' '.join(f'{k:>20s}' for k in HEADLINE)]
  for name, r in rows:
    lines.append(f'{name:32s} ' + ' '.join(f'{v:20.3f}' for v in headline(r).values()))
  overall = result['global_model']['overall']
  details = overall['epsilon_lower_bound_details']
  lines.append(f"epsilon_lower_bound: {details['refused']}" if 'refused' in details else
               f"epsilon_lower_bound: {overall['epsilon_lower_bound_confidence']:.0%} "
               f"confidence lower bound at delta={result['epsilon_lower_bound_delta']:.3g} "
               'for the attacks tried (not an upper bound); overall these records '
               f"certify at most {details['max_certifiable']:.2f}")
  privacy = result.get('privacy')
  if privacy:
    lines.append(f"accountant: {privacy['statement']}")
  return '\n'.join(lines)
