"""Writes hospital CSV exports as they arrive in practice, for the README's
"Your own data" walk-through.

    python -m experiments.make_messy_csvs --output_dir=messy

The records are scikit-learn's diabetes table as installed with the package
(sklearn/datasets/data/diabetes_data_raw.csv.gz, 442 patients: age, sex, bmi,
bp, s1..s6 and disease progression after one year), dealt at random (seed 0)
to three hospitals and a file of new patients, and written the way three
hospitals' systems export them:

  st_marys.csv    comma-separated, a patient_id column, 'NA' in a few bmi cells
  riverside.csv   Excel in a European locale: UTF-8 byte-order mark, ';' between
                  fields, decimal commas, an empty bp cell
  hillcrest.csv   tab-separated, columns in another order
  new_patients.csv  20 St Mary's patients not in st_marys.csv, without the label

Every file codes sex as 'female'/'male' and the label `progression` as 'Yes'
(progression score above 140) or 'No'.
"""

import csv
import gzip
import os

from absl import app
from absl import flags
import numpy as np
from sklearn import datasets

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'messy', 'Folder for the CSV files.')

COLUMNS = ('age', 'sex', 'bmi', 'bp', 's1', 's2', 's3', 's4', 's5', 's6')
HOSPITALS = ('st_marys', 'riverside', 'hillcrest')
NEW_PATIENTS = 20


def _raw_table() -> tuple[np.ndarray, np.ndarray]:
  """(features [442, 10] in original units, progression score [442])."""
  folder = os.path.join(os.path.dirname(datasets.__file__), 'data')
  with gzip.open(os.path.join(folder, 'diabetes_data_raw.csv.gz'), 'rt') as f:
    x = np.loadtxt(f)
  with gzip.open(os.path.join(folder, 'diabetes_target.csv.gz'), 'rt') as f:
    y = np.loadtxt(f)
  return x, y


def _rows(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> list[dict[str, str]]:
  return [{'patient_id': f'P{i:04d}', 'age': f'{r[0]:g}',
           'sex': 'female' if r[1] == 1 else 'male',
           **{c: f'{v:g}' for c, v in zip(COLUMNS[2:], r[2:])},
           'progression': 'Yes' if t > 140 else 'No'} for i, r, t in zip(ids, x, y)]


def write_messy_csvs(folder: str) -> dict[str, str]:
  """Writes the files described in the module docstring; returns name -> path."""
  x, y = _raw_table()
  ids = np.random.default_rng(0).permutation(len(y))
  new, rest = ids[:NEW_PATIENTS], ids[NEW_PATIENTS:]
  parts = dict(zip(HOSPITALS, np.array_split(rest, len(HOSPITALS))))
  rows = {h: _rows(x[p], y[p], p) for h, p in parts.items()}
  for row in rows['st_marys'][3::25]:
    row['bmi'] = 'NA'
  rows['riverside'][7]['bp'] = ''
  os.makedirs(folder, exist_ok=True)
  header = ['patient_id', *COLUMNS, 'progression']
  paths = {name: os.path.join(folder, f'{name}.csv')
           for name in (*HOSPITALS, 'new_patients')}
  _write(paths['st_marys'], header, rows['st_marys'], ',')
  european = [{k: v.replace('.', ',') if k in COLUMNS else v for k, v in row.items()}
              for row in rows['riverside']]
  _write(paths['riverside'], header, european, ';', encoding='utf-8-sig')
  _write(paths['hillcrest'], ['progression', *COLUMNS[::-1], 'patient_id'],
         rows['hillcrest'], '\t')
  _write(paths['new_patients'], header[:-1], _rows(x[new], y[new], new), ',')
  return paths


def _write(path: str, header: list[str], rows: list[dict[str, str]], delimiter: str,
           encoding: str = 'utf-8') -> None:
  with open(path, 'w', newline='', encoding=encoding) as f:
    writer = csv.DictWriter(f, header, delimiter=delimiter, extrasaction='ignore',
                            lineterminator='\r\n')
    writer.writeheader()
    writer.writerows(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for name, path in write_messy_csvs(_OUTPUT_DIR.value).items():
    print(f'{name}: {path}')


if __name__ == '__main__':
  app.run(main)
