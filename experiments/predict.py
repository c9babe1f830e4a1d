r"""Scores new patients with a trained model.

    python -m experiments.predict --model_dir=RUN/saved_model[/HOSPITAL] \
        --csv=new_patients.csv --output=scores.csv

Reads a CSV file with the model's raw columns (other columns, such as the label,
are ignored), validates it as training validates its files, and writes one row
per input row: its line in the file, its ID columns and the probability of the
positive class. Where preprocessing was per hospital the run exported one model
per hospital: give RUN/saved_model/HOSPITAL, the model of the patients' hospital.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from tff_med import serving

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'An exported model: RUN/saved_model, or '
                                 'RUN/saved_model/HOSPITAL where the run exported one model '
                                 'per hospital.', required=True)
_CSV = flags.DEFINE_string('csv', None, 'CSV file of new patients, one row each, with the '
                           'columns the model was trained on.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the scores (CSV: line, ID '
                              'columns, probability).', required=True)
_CSV_ENCODING = flags.DEFINE_string('csv_encoding', 'utf-8', 'Text encoding of --csv (e.g. '
                                    'cp1252 for Excel on Windows); a UTF-8 byte-order mark '
                                    'is dropped.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if os.path.isdir(_OUTPUT.value):
    raise SystemExit(f'error: --output={_OUTPUT.value}: is a directory; name a file')
  if os.path.abspath(_OUTPUT.value) == os.path.abspath(_CSV.value):
    raise SystemExit(f'error: --output={_OUTPUT.value}: is the input --csv file')
  tf.get_logger().setLevel('ERROR')
  try:
    model = serving.ServingModel(_MODEL_DIR.value)
    columns, table = serving.read_csv(_CSV.value, model.schema, _CSV_ENCODING.value)
  except ValueError as e:
    raise SystemExit(f'error: --{e}' if str(e).startswith('model_dir=') else f'error: {e}')
  probabilities = model.predict(columns)
  ids = [c for c in model.schema.id_columns if c in table.header]
  try:
    serving.write_scores(_OUTPUT.value, table, ids, probabilities)
  except OSError as e:
    raise SystemExit(f'error: --output={_OUTPUT.value}: cannot be written ({e.strerror})')
  schema = model.schema
  print(f'scored {len(probabilities)} rows of {_CSV.value} with {_MODEL_DIR.value}'
        + (f" (preprocessing with {schema.hospital}'s statistics)" if schema.hospital else '')
        + f'; scores in {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
