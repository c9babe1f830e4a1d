"""A bad hospital, simulated for research on robust aggregation (never on by
default; the summary records it).

  label_flip:     the attacker trains on its records with labels flipped (1 - y);
  scaled_update:  it sends its honest update multiplied by `scale`;
  random_update:  it sends Gaussian noise, each coordinate's std `scale` times the
                  root mean square of its honest update;
  stale:          it sends, every round, the update it sent the first round it
                  took part in (kept in the client work's server-side state, in the
                  clear: refused with secure aggregation).

The attack wraps an aggregation builder (`tff_med.mechanisms.plans`): each
hospital's client data becomes (its dataset, [1.0 if it is the attacker else 0.0,
round]) and the client work (FedAvg's local SGD, or DP-SGD under record-level DP)
is wrapped to change the attacker's update before the aggregation sees it, so
that every aggregation and robust aggregator receives the attack as it would
from a real hospital.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.algorithms import client_weighting, model_delta_client_work
from tff_med.config import AttackConfig


def attacked(build, attack: AttackConfig):
  """The aggregation builder `build` (task, client_work, dataset_fn, aggregator,
  ...) -> plan, with `attack`'s hospital attacking."""

  def build_attacked(task, client_work=None, dataset_fn=None, aggregator=None, **kwargs):
    if task.config.algorithm.name == 'fedprox':
      raise ValueError(f'attack.name={attack.name}: the simulated attacker trains with plain '
                       'local SGD; use algorithm.name=fedavg, fedadam, fedyogi or fedadagrad')
    if attack.name == 'stale' and task.config.secure_agg.mode != 'none':
      raise ValueError(f'attack.name=stale with secure_agg.mode={task.config.secure_agg.mode}: '
                       'the simulation keeps the attacker\'s first update on the server, in '
                       'the clear, which secure aggregation exists to prevent; use '
                       'secure_agg.mode=none')
    dataset_fn = dataset_fn or task.dataset
    if client_work is None:
      client_work = model_delta_client_work(task.config.algorithm, task.model_fn,
                                            client_weighting(task.config.algorithm))

    def attack_data(hospital: str, round_num: int):
      dataset = dataset_fn(hospital, round_num)
      is_attacker = hospital == attack.attacker
      if is_attacker and attack.name == 'label_flip':
        dataset = dataset.map(lambda b: {**b, 'y': 1.0 - b['y']})
      # TFF's client data is made of sequences: the marker is a one-element dataset.
      return dataset, tf.data.Dataset.from_tensors(
          tf.constant([float(is_attacker), float(round_num)], tf.float32))

    return build(task, client_work=_attacked_client_work(client_work, attack),
                 dataset_fn=attack_data, aggregator=aggregator, **kwargs)

  return build_attacked


def _attacked_client_work(inner: tff.learning.templates.ClientWorkProcess,
                          attack: AttackConfig) -> tff.learning.templates.ClientWorkProcess:
  """`inner` whose attacker's update is changed by `attack` (see the module
  docstring). State: (inner's state, the stored stale update, whether stored)."""
  weights_type = inner.next.type_signature.parameter[1].member
  data_type = inner.next.type_signature.parameter[2].member
  result_type = inner.next.type_signature.result.result.member
  update_type = result_type.update
  marker_type = tff.TensorType(np.float32, [2])

  @tff.tensorflow.computation
  def no_update():
    return tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype),
                                 tff.types.type_to_tf_tensor_specs(update_type))

  @tff.tensorflow.computation(result_type, marker_type, update_type, np.bool_)
  def change(result, marker, stored, has_stored):
    is_attacker = marker[0] > 0
    update = tuple(result.update)
    if attack.name == 'scaled_update':
      bad = tuple(attack.scale * u for u in update)
    elif attack.name == 'random_update':
      seed = tf.cast(tf.stack([marker[1], 7.0]), tf.int64)
      bad = tuple(attack.scale * tf.sqrt(tf.reduce_mean(tf.square(u)))
                  * tf.random.stateless_normal(tf.shape(u), seed=seed + k, dtype=u.dtype)
                  for k, u in enumerate(update))
    elif attack.name == 'stale':
      bad = tuple(tf.where(has_stored, s, u) for s, u in zip(tuple(stored), update))
    else:  # label_flip changed the attacker's records, not its update.
      bad = update
    chosen = tuple(tf.where(is_attacker, b, u) for b, u in zip(bad, update))
    return tff.learning.templates.ClientResult(update=chosen,
                                               update_weight=result.update_weight)

  @tff.tensorflow.computation(update_type, marker_type)
  def own_update(update, marker):
    """The attacker's update; zeros for everyone else (summed: the attacker's)."""
    return tuple(u * marker[0] for u in tuple(update))

  @tff.tensorflow.computation(marker_type)
  def attacker_count(marker):
    return marker[0]

  @tff.tensorflow.computation(tff.SequenceType(marker_type))
  def read_marker(markers):
    return markers.get_single_element()

  @tff.federated_computation
  def init_fn():
    return tff.federated_zip((inner.initialize(), tff.federated_eval(no_update, tff.SERVER),
                              tff.federated_value(False, tff.SERVER)))

  @tff.tensorflow.computation(update_type, np.bool_, update_type, np.float32)
  def remember(stored, has_stored, sent, attacker_in):
    first = tf.logical_and(tf.logical_not(has_stored), attacker_in > 0)
    # A list, as `no_update` gives: the state a round returns must have the
    # structure of `initialize`'s, or a saved state cannot be loaded back.
    return ([tf.where(first, s, old) for s, old in zip(tuple(sent), tuple(stored))],
            tf.logical_or(has_stored, attacker_in > 0))

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType((data_type, tff.SequenceType(marker_type)),
                                               tff.CLIENTS))
  def next_fn(state, weights, data):
    inner_state, stored, has_stored = state[0], state[1], state[2]
    dataset, marker = data[0], tff.federated_map(read_marker, data[1])
    output = inner.next(inner_state, weights, dataset)
    results = tff.federated_map(change, (output.result, marker,
                                         tff.federated_broadcast(stored),
                                         tff.federated_broadcast(has_stored)))
    if attack.name == 'stale':  # Only `stale` keeps an update (in the clear, server-side).
      sent = tff.federated_sum(tff.federated_map(own_update, (results.update, marker)))
      attacker_in = tff.federated_sum(tff.federated_map(attacker_count, marker))
      stored, has_stored = tff.federated_map(remember, (stored, has_stored, sent, attacker_in))
    return tff.templates.MeasuredProcessOutput(
        tff.federated_zip((output.state, stored, has_stored)), results, output.measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
