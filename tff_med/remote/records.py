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
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_med.data.federated_data import FederatedData

SPLITS = {'train': 'train.tfrecord', 'test': 'test.tfrecord'}


def write_records(data: FederatedData, hospital: str, folder: str) -> str:
  """Writes `hospital`'s train and test records under `folder`/`hospital`/;
  returns that path. Only the hospital's own node should ever be given it."""
  path = os.path.join(folder, hospital)
  os.makedirs(path, exist_ok=True)
  for split, arrays in (('train', data.train_arrays(hospital)), ('test', data.test[hospital])):
    with tf.io.TFRecordWriter(os.path.join(path, SPLITS[split])) as writer:
      for x, y in zip(*arrays):
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            'x': tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(x))),
            'y': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)])),
        })).SerializeToString())
  return path


def handle(hospital: str, round_num: int) -> str:
  """What the coordinator sends a hospital for a round: 'HOSPITAL/ROUND'."""
  if '/' in hospital or hospital in ('', '.', '..'):
    raise ValueError(f'hospital name {hospital!r}: a node\'s name may not contain "/"')
  return f'{hospital}/{round_num}'


def dataset_computation(feature_shape, batch_size: int, local_epochs: int, seed: int):
  """The TFF computation handle -> the hospital's training dataset for the
  round, batch for batch the one `tff_med.mechanisms.task.client_dataset` gives
  in process: elements OrderedDict(x=float32[feature_shape], y=float32[1]),
  shuffled with seed `seed` * 100003 + round, `local_epochs` passes."""
  features = {'x': tf.io.FixedLenFeature(list(feature_shape), tf.float32),
              'y': tf.io.FixedLenFeature([1], tf.int64)}

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    return {'x': example['x'], 'y': tf.cast(example['y'], tf.float32)}

  @tff.tensorflow.computation(tf.string)
  def hospital_dataset(handle_):
    parts = tf.strings.split(handle_, '/')
    round_num = tf.strings.to_number(parts[1], tf.int64)
    records = tf.data.TFRecordDataset(
        tf.strings.join([parts[0], '/', SPLITS['train']])).map(parse)
    count = records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    return (records.shuffle(count, seed=seed * 100003 + round_num)
            .batch(batch_size).repeat(local_epochs))

  return hospital_dataset
