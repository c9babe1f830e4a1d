"""Re-checks a run's audit log.

    python -m experiments.verify_audit_log RUN_DIR [--public_key=HEX]
    python -m experiments.verify_audit_log --new_key=study_key.pem

Checks (`tff_med.audit_log.verify_run`, which never loads a model) that
summary.json exists and audit_log.jsonl is an unbroken SHA-256 chain ending at
the head it records; the Ed25519 signature of that head (audit_log.sig),
required with --public_key (by that key) or where summary.json names a key
(without --public_key, by that key, with a warning: it proves only that the
folder's writer held it); that every logged epsilon equals dp_accounting's
epsilon over the DP events logged up to it, and summary.json's status and
privacy block the log's; that each model_saved entry names a folder inside
RUN_DIR whose files (serving signature, feature_schema.json, variables) and
checkpoint weights are those logged, a global model's the last round's; and
that no export under saved_model/ or personalized_model/ is unlogged. Exits 0,
or 1 naming the first bad line or file. --new_key writes a new private key for
`experiments.train --audit_key` and prints its public key.
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
  if result['signed_by'] and not _PUBLIC_KEY.value:
    print(f"warning: the signature was checked against the key {result['signed_by'][:16]}... "
          'that the folder itself names: it proves only that whoever wrote the folder held '
          'that key; give --public_key=HEX of the key you trust', file=sys.stderr)
  print(f"{argv[1]}: audit log verified: {result['entries']} entries, head "
        f"{result['head'][:16]}..., {result['epsilons_checked']} epsilons recomputed, "
        f"{result['models_checked']} saved model(s) match"
        + (f", signed by {result['signed_by'][:16]}..." if result['signed_by'] else
           ', not signed'))


if __name__ == '__main__':
  app.run(main)
