"""The README's "Your own data" walk-through, run as written: messy hospital
exports (text label, text column, NA cells, an ID column, a BOM, ';' with decimal
commas, tabs) from raw files to experiments.predict's scores."""

import csv
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
  """The `python -m ...` commands of the README block marked example:own_data."""
  text = (ROOT / 'README.md').read_text()
  block = re.search(r'<!-- example:own_data -->\n```sh\n(.*?)```', text, re.S).group(1)
  commands = re.sub(r'\\\n\s*', '', block).splitlines()
  return [c for c in commands if c.startswith('python -m ')]


def _run(command: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  return subprocess.run([sys.executable, *command.split()[1:]], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_readme_walk_through_from_messy_exports_to_scores(tmp_path):
  make, text_columns, missing, train, predict = _readme_commands()
  assert _run(make, tmp_path).returncode == 0
  raw = (tmp_path / 'messy' / 'riverside.csv').read_bytes()
  assert raw.startswith(b'\xef\xbb\xbf') and b';' in raw.splitlines()[0]

  for command, expected in [
      (text_columns, ["label column 'progression' holds text", '--positive_label=VALUE',
                      '--categorical_columns=sex']),
      (missing, ['7 missing values', "column 'bmi' ('NA')", "column 'bp' ('')",
                 '--missing=drop_rows'])]:
    result = _run(command, tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith('error: ') and len(result.stderr.splitlines()) == 1
    for part in expected:
      assert part in result.stderr, result.stderr

  result = _run(train, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  notes = result.stdout + result.stderr
  assert 'ID columns, not trained on: patient_id' in notes
  assert 'st_marys 6, riverside 1, hillcrest 0' in notes
  assert sorted(os.listdir(tmp_path / 'runs' / 'messy' / 'saved_model')) == [
      'hillcrest', 'riverside', 'st_marys']

  result = _run(predict, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  patients = list(csv.DictReader(open(tmp_path / 'messy' / 'new_patients.csv')))
  scores = list(csv.DictReader(open(tmp_path / 'scores.csv')))
  assert [s['patient_id'] for s in scores] == [p['patient_id'] for p in patients]
  assert len(scores) == 20
  probabilities = [float(s['probability']) for s in scores]
  assert all(0 < p < 1 for p in probabilities) and len(set(probabilities)) > 10
