r"""The 4 heart-disease hospitals as 4 local nodes, trained over mutual TLS.

    python -m experiments.cluster_demo --data_dir=../shared/data --output_dir=runs/cluster_demo

Gives each hospital a folder of its own under --output_dir holding only its UCI
file (its "disk"), makes the study's certificates, starts one
`experiments.hospital` node per hospital (which prepares its records and serves
them through stunnel on a local port), runs `experiments.train --hospitals=...`
as the coordinator (FedAvg with record-level DP by default; flags after `--`
go to it), then stops every node. The coordinator is given no data folder.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import shutil  # pylint: disable=g-import-not-at-top
import subprocess
import sys

import portpicker
from absl import app
from absl import flags

from tff_med import runtime
from tff_med.data import DATA_DIR_ENV, heart_disease, preprocess
from tff_med.remote import certs

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Folder with heart_disease/ (default '
                                f'${DATA_DIR_ENV}).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/cluster_demo', 'Where the hospitals\' '
                                  'folders, the certificates and the run go (made anew).')
_COORDINATOR_FLAGS = ['--dp=record', '--target_epsilon=1', '--rounds=20']


def _start_node(hospital: str, root: str, raw: str) -> tuple[subprocess.Popen, int]:
  port = portpicker.pick_unused_port()
  node = runtime.start_owned(
      [sys.executable, '-m', 'experiments.hospital', f'--name={hospital}',
       f'--prepare_from={raw}', f'--records={root}/{hospital}/records', f'--port={port}',
       f'--certs={root}/{hospital}/certs', '--host=127.0.0.1'],
      stdout=subprocess.PIPE, text=True)
  line = node.stdout.readline()
  if 'serving' not in line:
    raise RuntimeError(f'hospital {hospital}\'s node did not start: {line}')
  print(f'  {line.strip()}', flush=True)
  return node, port


def _give(root: str, party: str) -> None:
  """Copies `party`'s certificate, key and the CA's certificate to root/party/certs."""
  os.makedirs(f'{root}/{party}/certs')
  for name in (f'{party}.pem', f'{party}.key', 'ca.pem'):
    shutil.copy(f'{root}/study_ca/{name}', f'{root}/{party}/certs')


def _hospital_folders(root: str, data_dir: str) -> dict[str, str]:
  """Each party's certificates, and each hospital's own raw-data folder; returns
  hospital -> raw folder. (root/study_ca, with the CA's key, stays with the study.)"""
  source = preprocess.resolve_dir(data_dir, 'heart_disease')
  certs.make_study_certs(f'{root}/study_ca', heart_disease.HOSPITALS)
  _give(root, certs.COORDINATOR)
  raw = {}
  for hospital in heart_disease.HOSPITALS:
    raw[hospital] = f'{root}/{hospital}/raw'
    os.makedirs(raw[hospital])
    shutil.copy(f'{source}/processed.{hospital}.data', raw[hospital])
    _give(root, hospital)
  return raw


def main(argv):
  data_dir = _DATA_DIR.value or os.environ.get(DATA_DIR_ENV)
  if not data_dir:
    raise app.UsageError(f'--data_dir: give the folder with heart_disease/ or set {DATA_DIR_ENV}')
  root = os.path.abspath(_OUTPUT_DIR.value)
  shutil.rmtree(root, ignore_errors=True)
  raw = _hospital_folders(root, data_dir)
  print(f'starting {len(raw)} hospital nodes (each prepares its own records)', flush=True)
  nodes = {}
  try:
    for hospital, folder in raw.items():
      nodes[hospital] = _start_node(hospital, root, folder)
    coordinator = [
        sys.executable, '-m', 'experiments.train',
        '--hospitals=' + ','.join(f'{h}=localhost:{port}' for h, (_, port) in nodes.items()),
        f'--certs={root}/{certs.COORDINATOR}/certs', f'--output_dir={root}/run',
        *(argv[1:] or _COORDINATOR_FLAGS)]
    print('coordinator:', ' '.join(coordinator[1:]), flush=True)
    status = subprocess.run(coordinator, check=False).returncode
  finally:
    runtime.stop_owned([node for node, _ in nodes.values()])
  print(f'stopped {len(nodes)} nodes', flush=True)
  sys.exit(status)


if __name__ == '__main__':
  app.run(main)
