"""Personalisation by fine-tuning (`personalize.method=finetune`).

The summary's numbers are checked against the saved models re-evaluated here
(accuracy by hand, AUC by scikit-learn), Keras fine-tuning against a fit
written here, and every epsilon against dp_accounting called directly on
events built here from the run's sizes: the training rounds' DP-SGD steps plus
the fine-tuning's.
"""

import json
import math

import dp_accounting
import numpy as np
import pytest
import sklearn.metrics
import tensorflow as tf

from experiments import flags
from tff_med import personalization, training
from tff_med.algorithms import AlgorithmConfig
from tff_med.data.federated_data import FederatedData
from tff_med.models import ModelConfig, build_keras_model
from tff_med.personalization import PersonalizeConfig
from tff_med.privacy.dp_account import PrivacyConfig

SIZES = {'small': 12, 'medium': 25, 'large': 40}
BATCH, ROUNDS, EPOCHS, LR, DELTA = 5, 3, 2, 0.2, 1e-3


def _data(sizes=SIZES):
  """Each hospital has its own decision boundary, so fine-tuning has something to learn."""
  rng = np.random.default_rng(7)
  train, test = {}, {}
  for k, (h, n) in enumerate(sizes.items()):
    x = rng.normal(size=(2 * n, 3)).astype(np.float32)
    y = (x[:, 0] + (k - 1) * 1.5 * x[:, 1] > 0).astype(np.int64)
    train[h], test[h] = (x[:n], y[:n]), (x[n:], y[n:])
  return FederatedData.from_arrays('toy', train, test)


def _keras_model():
  return build_keras_model(ModelConfig('logreg'), (3,), seed=1)


def _config(privacy=PrivacyConfig(), epochs=EPOCHS, rounds=ROUNDS, algorithm='fedavg'):
  return training.TrainConfig(AlgorithmConfig(algorithm, client_lr=LR), rounds=rounds,
                              batch_size=BATCH, eval_every=rounds, privacy=privacy,
                              personalize=PersonalizeConfig('finetune', epochs=epochs))


def _run(config, output_dir=None, data=None):
  return training.run(data or _data(), _keras_model, config,
                      output_dir=str(output_dir) if output_dir else None,
                      log=lambda line: None)


def _metrics(model, x, y):
  """Accuracy and AUC of a loaded model, computed here."""
  logits = np.asarray(model(x, training=False)).reshape(-1)
  return {'accuracy': float(np.mean((logits > 0).astype(int) == y)),
          'auc': float(sklearn.metrics.roc_auc_score(y, logits))}


def _audit_events(output_dir) -> list[str]:
  with open(output_dir / 'audit_log.jsonl') as f:
    return [line['event'] for line in map(json.loads, f)
            if line['event'] not in ('round', 'release', 'model_saved')]


def test_finetuning_without_dp_matches_the_saved_models(tmp_path):
  data = _data()
  summary = _run(_config(), tmp_path, data)
  block = summary['personalization']
  assert (block['method'], block['epochs'], block['lr']) == ('finetune', EPOCHS, LR)
  global_model = tf.keras.models.load_model(tmp_path / 'saved_model')
  personal = {h: tf.keras.models.load_model(tmp_path / 'personalized_model' / h)
              for h in data.hospitals}
  for h in data.hospitals:
    x, y = data.test[h]
    for kind, model in (('global', global_model), ('personalized', personal[h])):
      for metric, value in _metrics(model, x, y).items():
        assert block['per_hospital'][h][kind][metric] == pytest.approx(value, abs=1e-9)
    # The global numbers are the run's own evaluation of its final model.
    assert block['per_hospital'][h]['global']['accuracy'] == summary['per_hospital'][h]['accuracy']
    assert not np.allclose(personal[h].get_weights()[0], global_model.get_weights()[0])
  for kind in ('global', 'personalized'):
    assert block['mean_hospital'][kind]['accuracy'] == pytest.approx(
        np.mean([block['per_hospital'][h][kind]['accuracy'] for h in data.hospitals]))
  # Each hospital's boundary differs: fine-tuning on its own records must help on average.
  assert block['mean_hospital']['personalized']['accuracy'] > (
      block['mean_hospital']['global']['accuracy'])

  # The same fine-tuning written here: Keras SGD on the hospital's own training
  # records from the global weights, batches of BATCH, EPOCHS epochs.
  x, y = data.train_arrays('large')
  reference = _keras_model()
  reference.set_weights(global_model.get_weights())
  reference.compile(tf.keras.optimizers.SGD(LR),
                    tf.keras.losses.BinaryCrossentropy(from_logits=True))
  reference.fit(tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)[:, None]))
                .shuffle(len(y), seed=0 * 100003 + ROUNDS + 1).batch(BATCH),
                epochs=EPOCHS, verbose=0)
  for got, want in zip(personal['large'].get_weights(), reference.get_weights()):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  released = summary['privacy']['released']
  assert any(k.startswith('personalised models') and v == 'not protected'
             for k, v in released.items())

  # A rerun of the finished run reports what it did, without fine-tuning again.
  before = {h: personal[h].get_weights() for h in data.hospitals}
  again = _run(_config(), tmp_path, data)
  assert again['personalization'] == json.loads(json.dumps(block))
  for h in data.hospitals:
    reloaded = tf.keras.models.load_model(tmp_path / 'personalized_model' / h)
    for got, want in zip(reloaded.get_weights(), before[h]):
      np.testing.assert_array_equal(got, want)
  assert _audit_events(tmp_path).count('personalized') == 1


def _rdp_epsilon(n, sigma, rounds, finetunes=1, epochs=EPOCHS):
  """dp_accounting directly: per round ceil(n/b) DP-SGD steps at rate b/n; the
  fine-tuning epochs * ceil(n/b) more, `finetunes` times."""
  step = dp_accounting.PoissonSampledDpEvent(BATCH / n, dp_accounting.GaussianDpEvent(sigma))
  acc = dp_accounting.rdp.RdpAccountant()
  if rounds:
    acc.compose(step, rounds * math.ceil(n / BATCH))
  for _ in range(finetunes):
    acc.compose(step, epochs * math.ceil(n / BATCH))
  return acc.get_epsilon(DELTA)


def _worst(sigma, rounds, finetunes=1):
  return max(_rdp_epsilon(n, sigma, rounds, finetunes) for n in SIZES.values())


def test_record_level_finetuning_is_charged_to_each_hospital(tmp_path):
  sigma = 1.5
  summary = _run(_config(PrivacyConfig('record', noise_multiplier=sigma, target_delta=DELTA)),
                 tmp_path)
  privacy, block = summary['privacy'], summary['personalization']
  for h, n in SIZES.items():
    expected = _rdp_epsilon(n, sigma, ROUNDS)
    assert privacy['per_hospital'][h]['epsilon'] == pytest.approx(expected, rel=1e-6)
    assert expected > _rdp_epsilon(n, sigma, ROUNDS, finetunes=0)
    steps = math.ceil(n / BATCH)
    assert privacy['per_hospital'][h]['steps'] == (ROUNDS + EPOCHS) * steps
    assert block['per_hospital'][h]['steps'] == EPOCHS * steps
  assert f"ε={privacy['epsilon']:.3g}" in privacy['statement']
  assert 'charged' in privacy['released']['personalised models (personalized_model/HOSPITAL)']
  # Charged (and saved) before anything of the fine-tuning was released.
  events = _audit_events(tmp_path)
  assert events.index('personalization_charged') < events.index('personalized')
  models = [tf.keras.models.load_model(tmp_path / 'personalized_model' / h) for h in SIZES]
  assert not np.allclose(models[0].get_weights()[0], models[1].get_weights()[0])


def test_target_epsilon_plans_the_finetuning():
  summary = _run(_config(PrivacyConfig('record', target_epsilon=3.0, target_delta=DELTA)))
  sigma = summary['privacy']['noise_multiplier']
  assert _worst(sigma, ROUNDS) <= 3.0 + 1e-9  # Training plus fine-tuning within the target.
  assert _worst(sigma * 0.97, ROUNDS) > 3.0  # The smallest such noise.
  assert summary['privacy']['epsilon'] == pytest.approx(_worst(sigma, ROUNDS), rel=1e-6)
  assert summary['privacy']['epsilon'] <= 3.0 + 1e-9


def test_max_epsilon_reserves_the_finetuning(tmp_path):
  sigma, rounds = 1.5, 6
  # All rounds fit without the fine-tuning, but not with it: the budget check
  # stops training early enough for the fine-tuning to fit.
  budget = (_worst(sigma, rounds, finetunes=0) + _worst(sigma, rounds)) / 2
  fits = max(r for r in range(rounds + 1) if _worst(sigma, r) <= budget)
  assert fits < rounds
  summary = _run(_config(PrivacyConfig('record', noise_multiplier=sigma, target_delta=DELTA,
                                       max_epsilon=budget), rounds=rounds), tmp_path)
  assert summary['stopped_early'] is True and summary['rounds_completed'] == fits
  assert 'fine-tuning reserved' in summary['reason']
  assert 'skipped' not in summary['personalization']
  assert summary['privacy']['epsilon'] == pytest.approx(_worst(sigma, fits), rel=1e-6)
  assert summary['privacy']['epsilon'] <= budget


class _Killed(Exception):
  """The process dies mid-fine-tuning (after the charge was saved)."""


def test_a_run_killed_mid_finetuning_is_charged_again(tmp_path, monkeypatch):
  sigma = 1.5
  # Room for one fine-tuning after the rounds, not for two.
  budget = (_worst(sigma, ROUNDS) + _worst(sigma, ROUNDS, finetunes=2)) / 2
  config = _config(PrivacyConfig('record', noise_multiplier=sigma, target_delta=DELTA,
                                 max_epsilon=budget))

  def killed(*args):
    raise _Killed
  with monkeypatch.context() as patch:
    patch.setattr(personalization, '_dp_finetune', killed)
    with pytest.raises(_Killed):
      _run(config, tmp_path)
  assert not (tmp_path / 'personalized_model').exists()
  summary = _run(config, tmp_path)  # The charge was saved: it stays, and the rerun's won't fit.
  assert 'privacy.max_epsilon' in summary['personalization']['skipped']
  assert '1 earlier session' in summary['personalization']['skipped']
  assert summary['privacy']['epsilon'] == pytest.approx(_worst(sigma, ROUNDS), rel=1e-6)
  assert not (tmp_path / 'personalized_model').exists()

  # Without a budget, the rerun fine-tunes and is charged a second time.
  config = _config(PrivacyConfig('record', noise_multiplier=sigma, target_delta=DELTA))
  output_dir = tmp_path / 'unbounded'
  with monkeypatch.context() as patch:
    patch.setattr(personalization, '_dp_finetune', killed)
    with pytest.raises(_Killed):
      _run(config, output_dir)
  summary = _run(config, output_dir)
  assert summary['personalization']['charges'] == 2
  for h, n in SIZES.items():
    assert summary['privacy']['per_hospital'][h]['epsilon'] == pytest.approx(
        _rdp_epsilon(n, sigma, ROUNDS, finetunes=2), rel=1e-6)
  assert _audit_events(output_dir).count('personalization_charged') == 2


def test_hospital_level_dp_says_the_personalised_models_are_not_covered():
  summary = _run(_config(PrivacyConfig('client', noise_multiplier=0.8, l2_norm_clip=0.5,
                                       target_delta=1e-2)))
  line = summary['privacy']['released']['personalised models (personalized_model/HOSPITAL)']
  assert line.startswith('not protected') and 'without DP' in line
  assert summary['personalization']['privacy_level'] == 'client'
  assert 'steps' not in summary['personalization']['per_hospital']['small']


@pytest.mark.parametrize('personalize,algorithm,message,flag', [
    (PersonalizeConfig('finetune', epochs=0), 'fedavg', 'personalize.epochs=0',
     '--personalize_epochs=0'),
    (PersonalizeConfig('finetune'), 'local', 'personalize.method=finetune with '
     'algorithm.name=local', '--personalize=finetune with --algorithm=local'),
    (PersonalizeConfig('none', epochs=3), 'fedavg', 'personalize.epochs=3 is set but '
     'personalize.method=none', '--personalize_epochs=3 is set but --personalize=none'),
    (PersonalizeConfig('finetune', lr=-0.1), 'fedavg', 'personalize.lr=-0.1',
     '--personalize_lr=-0.1'),
    (PersonalizeConfig('retrain'), 'fedavg', "personalize.method='retrain'",
     "--personalize='retrain'"),
])
def test_bad_config_names_the_field_and_its_flag(personalize, algorithm, message, flag):
  config = training.TrainConfig(AlgorithmConfig(algorithm), personalize=personalize)
  with pytest.raises(ValueError, match=message) as error:
    training.build_plan(_data(), _keras_model, config, log=lambda line: None)
  assert flags.flag_message(str(error.value)).startswith(flag)
