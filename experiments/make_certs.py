r"""Creates a study's certificates for mutual TLS between coordinator and nodes.

    python -m experiments.make_certs --output_dir=certs \
        --hospitals=cleveland,hungarian,switzerland,va --hosts=localhost,127.0.0.1

Writes a study CA, the coordinator's client certificate and each hospital's
server certificate (for its name and --hosts) with their keys (0600). Give each
node NAME.pem, NAME.key and ca.pem; the coordinator coordinator.pem,
coordinator.key and ca.pem; keep ca.key offline.
"""

from absl import app
from absl import flags

from tff_med.remote.certs import make_study_certs

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'certs', 'Folder for the certificates.')
_HOSPITALS = flags.DEFINE_list('hospitals', None, 'The hospitals\' names.', required=True)
_HOSTS = flags.DEFINE_list('hosts', ['localhost', '127.0.0.1'],
                           'Names and addresses the nodes are reached by.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    make_study_certs(_OUTPUT_DIR.value, _HOSPITALS.value, _HOSTS.value)
  except (FileExistsError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  print(f'certificates for the coordinator and {len(_HOSPITALS.value)} hospitals in '
        f'{_OUTPUT_DIR.value}')


if __name__ == '__main__':
  app.run(main)
