r"""Prepares and serves one hospital's records to the study's coordinator.

    python -m experiments.hospital --name=cleveland --prepare_from=/srv/uci \
        --records=/srv/tff_med/records --port=7001 --certs=/srv/tff_med/certs

With --prepare_from, first reads the hospital's raw data there (heart_disease:
its own processed.NAME.data only) and writes, in --records/NAME/, its
preprocessed train/test records and the manifest the coordinator may read
(`tff_med.remote.records.prepare`); without it, serves records written before.
Runs TFF's worker in --records behind stunnel,
which accepts only the study coordinator's certificate (`experiments.make_certs`):
--certs holds NAME.pem, NAME.key and ca.pem. Stops on SIGINT or SIGTERM, and
stops its worker and proxy with it. --insecure_localhost serves the worker
itself on --port without TLS, and (TFF's worker has no bind address) on every
interface: for tests on one machine behind a closed firewall only.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import signal  # pylint: disable=g-import-not-at-top
import sys

from absl import app
from absl import flags

from tff_med.data import DATASETS, DataConfig, DataError, heart_disease, medmnist
from tff_med.data.preprocess import SCALINGS
from tff_med.remote import records
from tff_med.remote.certs import TlsFiles, check_hospital_name
from tff_med.remote.node import HospitalNode

_NAME = flags.DEFINE_string('name', None, 'The hospital this node serves.', required=True)
_RECORDS = flags.DEFINE_string('records', None, 'Folder holding NAME/train.tfrecord and '
                               'NAME/test.tfrecord.', required=True)
_PORT = flags.DEFINE_integer('port', None, 'Port the coordinator connects to.', required=True)
_HOST = flags.DEFINE_string('host', '0.0.0.0', 'Address stunnel listens on.')
_CERTS = flags.DEFINE_string('certs', None, 'Folder holding NAME.pem, NAME.key, ca.pem.')
_PREPARE_FROM = flags.DEFINE_string('prepare_from', None, 'Folder with the hospital\'s raw '
                                    'data: prepare its records before serving.')
_DATASET = flags.DEFINE_enum('dataset', 'heart_disease',
                             [d for d in DATASETS if d != 'csv'],
                             'With --prepare_from: the data set.')
_SCALING = flags.DEFINE_enum('scaling', 'public_ranges', list(SCALINGS), 'With '
                             '--prepare_from: feature scaling (zscore uses the hospital\'s own '
                             'statistics, which a DP guarantee does not cover).')
_SEED = flags.DEFINE_integer('seed', 0, 'With --prepare_from: seed of the train/test split '
                             '(the coordinator\'s --seed for the simulation\'s split).')
_SPLIT = flags.DEFINE_enum('split', 'seeded', list(heart_disease.SPLITS), 'With '
                           '--prepare_from, heart_disease: seeded or flamby (FLamby\'s split).')
_INSECURE = flags.DEFINE_bool('insecure_localhost', False, 'Serve the worker without TLS, on '
                              'every interface: tests on one machine only.')


def _prepare_or_check() -> TlsFiles | None:
  """Prepares the records (--prepare_from) and returns the node's TLS files;
  ValueError naming the flag at fault."""
  check_hospital_name(_NAME.value)
  if _INSECURE.value == bool(_CERTS.value):
    raise ValueError('give --certs (mutual TLS) or --insecure_localhost, not both or neither')
  if _INSECURE.value and flags.FLAGS['host'].present:
    raise ValueError('--host applies to TLS; --insecure_localhost serves the worker directly: '
                     'leave it out')
  if _PREPARE_FROM.value:
    ignored = [name for name, applies in (
        ('scaling', _DATASET.value not in medmnist.NAMES),
        ('split', _DATASET.value == 'heart_disease')) if flags.FLAGS[name].present and not applies]
    if ignored:
      raise ValueError(f'--{ignored[0]} does not apply to --dataset={_DATASET.value}: it '
                       'would be ignored')
    try:
      records.prepare(DataConfig(_DATASET.value, data_dir=_PREPARE_FROM.value, seed=_SEED.value,
                                 scaling=_SCALING.value, split=_SPLIT.value),
                      _NAME.value, _RECORDS.value)
    except DataError as e:
      raise ValueError(f'--prepare_from={_PREPARE_FROM.value}: {e}') from None
  else:
    for name in ('dataset', 'scaling', 'seed', 'split'):
      if flags.FLAGS[name].present:
        raise ValueError(f'--{name} applies to --prepare_from: it would be ignored')
  if not os.path.isdir(os.path.join(_RECORDS.value, _NAME.value)):
    raise ValueError(f'--records={_RECORDS.value}: no folder {_NAME.value}/ with the '
                     'hospital\'s records in it')
  try:
    return TlsFiles.of(_CERTS.value, _NAME.value) if _CERTS.value else None
  except FileNotFoundError as e:
    raise ValueError(f'--certs: {e}') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    tls = _prepare_or_check()
  except ValueError as e:
    sys.exit(f'error: {e}')
  try:
    node = HospitalNode(_RECORDS.value, _PORT.value, tls, _HOST.value).start()
  except (OSError, RuntimeError) as e:
    sys.exit(f'error: --port={_PORT.value}: {e}')
  try:
    print(f'hospital {_NAME.value} serving on port {_PORT.value}'
          f'{" with mutual TLS" if tls else " (insecure, localhost)"}', flush=True)
    signal.pause()  # Until SIGINT or SIGTERM (`_exit`).
  finally:
    node.stop()


def _exit(signum, frame):
  del frame
  raise SystemExit(128 + signum)

if __name__ == '__main__':
  # Handlers, not a blocked mask for sigwait: the worker and stunnel would inherit
  # the mask and wait out their stop's grace period.
  signal.signal(signal.SIGINT, _exit)
  signal.signal(signal.SIGTERM, _exit)
  app.run(main)
