"""Re-checks a run's audit log.

    python -m experiments.verify_audit_log RUN_DIR [--public_key=HEX]
    python -m experiments.verify_audit_log --new_key=study_key.pem

Checks that audit_log.jsonl is an unbroken SHA-256 chain ending at the head in
summary.json, the Ed25519 signature of that head (audit_log.sig; with
--public_key, by that key), that every logged epsilon equals dp_accounting's
epsilon over the DP events logged up to it, and that each saved model holds the
weights whose hash the last round logged. Exits 0, or 1 naming the first bad
line. --new_key writes a new private key for `experiments.train --audit_key`
and prints its public key.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tff_med import audit_log

_PUBLIC_KEY = flags.DEFINE_string('public_key', None, 'Hex Ed25519 public key the head must '
                                  'be signed with (default: the key in audit_log.sig, '
                                  'which proves only that its writer held it).')
_NEW_KEY = flags.DEFINE_string('new_key', None, 'Write a new Ed25519 private key (PEM, '
                               'mode 0600) to this path, print its public key and exit.')


def main(argv):
  if _NEW_KEY.value:
    if len(argv) > 1:
      raise app.UsageError('--new_key takes no RUN_DIR')
    try:
      print(audit_log.new_key(_NEW_KEY.value))
    except OSError as e:
      sys.exit(f'error: --new_key={_NEW_KEY.value}: {e.strerror}')
    return
  if len(argv) != 2:
    raise app.UsageError('give one RUN_DIR')
  try:
    result = audit_log.verify_run(argv[1], _PUBLIC_KEY.value)
  except (audit_log.AuditLogError, OSError) as e:
    sys.exit(f'error: {e}')
  print(f"{argv[1]}: audit log verified: {result['entries']} entries, head "
        f"{result['head'][:16]}..., {result['epsilons_checked']} epsilons recomputed, "
        f"{result['models_checked']} saved model(s) match"
        + (f", signed by {result['signed_by'][:16]}..." if result['signed_by'] else
           ', not signed'))


if __name__ == '__main__':
  app.run(main)
