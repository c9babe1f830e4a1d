"""A hospital's records as files on its own disk, and the TFF computation that
reads them inside the hospital's worker: the coordinator sends only a handle.

TFF's workers run TensorFlow graphs, not Python, and load no data themselves; a
client computation that builds its `tf.data` pipeline from a CLIENTS-placed
string is the way TFF's maintainers suggest (TFF #864), composed with the
learning process by `tff.simulation.compose_dataset_computation_with_learning_process`.
The worker runs in the hospital's records folder, so a handle names a hospital
and a round, never a path the coordinator knows:

    RECORDS/HOSPITAL/train.tfrecord   tf.train.Example per record: x (float list,
                                      the flattened feature_shape), y (int64)
    RECORDS/HOSPITAL/test.tfrecord
    RECORDS/HOSPITAL/manifest.json    what the coordinator may know of the records
                                      (`manifest`): counts, shapes, the schema
"""

import collections
import hashlib
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med import data as data_lib
from tff_med.data import DataConfig, DataError, heart_disease
from tff_med.data.federated_data import FederatedData
from tff_med.remote.certs import check_hospital_name

SPLITS = {'train': 'train.tfrecord', 'test': 'test.tfrecord'}
MANIFEST = 'manifest.json'


def write_records(data: FederatedData, hospital: str, folder: str) -> str:
  """Writes `hospital`'s train and test records under `folder`/`hospital`/;
  returns that path, with the hospital's `manifest`. Only the hospital's own
  node should ever be given it."""
  path = os.path.join(folder, hospital)
  os.makedirs(path, exist_ok=True)
  for split, arrays in (('train', data.train_arrays(hospital)), ('test', data.test[hospital])):
    with tf.io.TFRecordWriter(os.path.join(path, SPLITS[split])) as writer:
      for x, y in zip(*arrays):
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            'x': tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(x))),
            'y': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)])),
        })).SerializeToString())
  with open(os.path.join(path, MANIFEST), 'w') as f:
    json.dump(manifest(data, hospital), f, indent=2)
  return path


def prepare(config: DataConfig, hospital: str, folder: str) -> FederatedData:
  """A node's preparation: loads `hospital`'s data as `config` describes (its
  own file only for heart_disease; a simulated hospital from the simulation's
  pool), writes its records under `folder` (`write_records`) and returns it.
  DataError naming the hospital where the data set has no such hospital."""
  if config.dataset == 'heart_disease':
    data = heart_disease.load(config.resolved_data_dir(), config.seed, config.scaling,
                              hospitals=(hospital,), split=config.split)
  else:
    data = data_lib.load(config)
    if hospital not in data.hospitals:
      raise DataError(f'hospital {hospital!r}: data set {config.dataset} has '
                      f'{", ".join(data.hospitals)}')
  write_records(data, hospital, folder)
  return data


def manifest(data: FederatedData, hospital: str) -> dict:
  """What the node releases of its records: what the simulation's outputs
  already hold (sizes, shapes, description, preprocessing, the export schema)
  and a sha256 of the records, which the coordinator only logs keyed
  (`RunState.fingerprints`)."""
  return {'dataset': data.name, 'hospital': hospital,
          'feature_shape': list(data.feature_shape),
          'feature_names': list(data.feature_names) if data.feature_names else None,
          'train_rows': data.num_train(hospital), 'test_rows': data.num_test(hospital),
          'description': data.description, 'preprocessing': dict(data.preprocessing),
          'random_split': data.random_split, 'schema': data.schemas[hospital].to_json(),
          'records_sha256': data.digest_records(hashlib.sha256(), hospital).hexdigest()}


def handle(hospital: str, round_num: int) -> str:
  """What the coordinator sends a hospital for a round: 'HOSPITAL/ROUND'."""
  check_hospital_name(hospital)
  return f'{hospital}/{round_num}'


def _file(hospital, split: str) -> tf.data.Dataset:
  """`hospital`'s `split` file, records unparsed (counting them parses nothing)."""
  return tf.data.TFRecordDataset(tf.strings.join([hospital, '/', SPLITS[split]]))


def _records(hospital, split: str, feature_shape) -> tf.data.Dataset:
  """`hospital`'s `split` records (inside a worker: a path relative to its
  folder), elements OrderedDict(x=float32[feature_shape], y=float32[1])."""
  features = {'x': tf.io.FixedLenFeature(list(feature_shape), tf.float32),
              'y': tf.io.FixedLenFeature([1], tf.int64)}

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    return collections.OrderedDict(x=example['x'], y=tf.cast(example['y'], tf.float32))

  return _file(hospital, split).map(parse)


def _count(dataset: tf.data.Dataset) -> tf.Tensor:
  return dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)


def dataset_computation(feature_shape, batch_size: int, local_epochs: int, seed: int,
                        one_batch: bool = False):
  """The TFF computation handle -> the hospital's training dataset for the
  round, batch for batch the one `tff_med.mechanisms.task.client_dataset` gives
  in process: elements OrderedDict(x=float32[feature_shape], y=float32[1]),
  shuffled with seed `seed` * 100003 + round, `local_epochs` passes; with
  `one_batch`, every record in one batch (record-level DP: DP-SGD samples)."""

  @tff.tensorflow.computation(tf.string)
  def hospital_dataset(handle_):
    parts = tf.strings.split(handle_, '/')
    records = _records(parts[0], 'train', feature_shape)
    count = _count(_file(parts[0], 'train'))
    if one_batch:
      return records.batch(count)
    round_num = tf.strings.to_number(parts[1], tf.int64)
    return (records.shuffle(count, seed=seed * 100003 + round_num)
            .batch(batch_size).repeat(local_epochs))

  return hospital_dataset


def manifest_computation():
  """The TFF computation hospital name -> its manifest.json text (run in the
  hospital's own context)."""

  @tff.tensorflow.computation(tf.string)
  def read_manifest(hospital):
    return tf.io.read_file(tf.strings.join([hospital, '/', MANIFEST]))

  return read_manifest


def evaluation_computation(model_fn, weights_type, feature_shape):
  """The TFF computation (model weights, hospital name) -> the hospital's test
  metrics, computed in its worker on all its test records at once:
  OrderedDict(accuracy, auc), as `tff_med.evaluation.binary_metrics` computes
  them (accuracy at logit 0; exact ROC-AUC, ties at their mean rank; NaN where
  the test set holds one class or a logit is NaN). `model_fn`: the run's
  `tff.learning` model function."""

  @tff.tensorflow.computation(weights_type, tf.string)
  def evaluate(weights, hospital):
    model, weights = model_fn(), tff.learning.models.ModelWeights(*weights)
    assigned = [v.assign(w) for v, w in zip(
        [*model.trainable_variables, *model.non_trainable_variables],
        [*weights.trainable, *weights.non_trainable])]
    records = _records(hospital, 'test', feature_shape)
    test = records.batch(_count(_file(hospital, 'test'))).get_single_element()
    with tf.control_dependencies(assigned):  # A graph: predict after the weights are set.
      logits = tf.cast(tf.reshape(model.predict_on_batch(test['x'], training=False), [-1]),
                       tf.float64)
    labels = tf.cast(tf.reshape(test['y'], [-1]), tf.float64)
    return _binary_metrics(logits, labels)

  return evaluate


def _binary_metrics(logits: tf.Tensor, labels: tf.Tensor) -> collections.OrderedDict:
  """Accuracy and the Mann-Whitney ROC-AUC of float64 [N] logits and 0/1 labels."""
  n = tf.size(logits)
  nan = tf.constant(float('nan'), tf.float64)
  accuracy = tf.reduce_mean(tf.cast(tf.equal(logits > 0, labels > 0.5), tf.float64))
  order = tf.argsort(logits, stable=True)
  sorted_logits, sorted_labels = tf.gather(logits, order), tf.gather(labels, order)
  _, group = tf.unique(sorted_logits)  # Sorted: equal logits are adjacent.
  ranks = tf.math.segment_mean(tf.cast(tf.range(1, n + 1), tf.float64), group)
  positives = tf.reduce_sum(sorted_labels)
  negatives = tf.cast(n, tf.float64) - positives
  rank_sum = tf.reduce_sum(tf.gather(ranks, group) * sorted_labels)
  auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
  diverged = tf.reduce_any(tf.math.is_nan(logits))
  return collections.OrderedDict(
      accuracy=tf.where(diverged, nan, accuracy),
      auc=tf.where(diverged | (positives == 0) | (negatives == 0), nan, auc))
