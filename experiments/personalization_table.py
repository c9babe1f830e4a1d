"""Global vs personalised test metrics per hospital over seeds, from finished runs.

    for seed in 0 1 2 3 4; do
      python -m experiments.train --dataset=heart_disease --personalize=finetune \\
          --seed=$seed --output_dir=runs/personalize/nodp/seed$seed
    done
    python -m experiments.personalization_table \\
        --runs=no_dp=runs/personalize/nodp --output=runs/personalize/table

Each --runs entry LABEL=DIR names a setting whose runs are DIR/seed*/summary.json
(`experiments.train --personalize=finetune`); the table gives, per hospital and
for the mean over hospitals, the global model's and the personalised models'
test accuracy and AUC as mean ± std over those seeds, with each setting's
epsilon where it has one. Prints markdown; --output writes OUTPUT.md and
OUTPUT.json.
"""

import glob
import json
import math
import os
import statistics

from absl import app
from absl import flags

_RUNS = flags.DEFINE_list('runs', [], 'LABEL=DIR, ...: DIR holds seed*/summary.json of '
                          'runs with --personalize=finetune.')
_OUTPUT = flags.DEFINE_string('output', None, 'Writes OUTPUT.md and OUTPUT.json.')
METRICS = ('accuracy', 'auc')


def _summaries(folder: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(folder, 'seed*', 'summary.json')))
  if not paths:
    raise ValueError(f'--runs: no seed*/summary.json under {folder}')
  summaries = []
  for path in paths:
    with open(path) as f:
      summary = json.load(f)
    if 'personalization' not in summary or 'skipped' in summary['personalization']:
      raise ValueError(f'--runs: {path} holds no personalisation (run with '
                       '--personalize=finetune)')
    summaries.append(summary)
  return summaries


def _mean_std(values: list) -> dict:
  """Mean and std over the seeds where the value is defined (an AUC is not on a
  one-class test set); `n` counts them."""
  values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
  if not values:
    return {'mean': math.nan, 'std': math.nan, 'n': 0}
  return {'mean': statistics.fmean(values), 'std': statistics.pstdev(values), 'n': len(values)}


def setting_row(summaries: list[dict]) -> dict:
  """Per hospital (and 'mean'): {global|personalized: {metric: mean/std over seeds}}."""
  blocks = [s['personalization'] for s in summaries]
  hospitals = list(blocks[0]['per_hospital'])
  columns = {h: [b['per_hospital'][h] for b in blocks] for h in hospitals}
  columns['mean'] = [b['mean_hospital'] for b in blocks]
  row = {'seeds': [s['seed'] for s in summaries], 'epochs': blocks[0]['epochs'],
         'lr': blocks[0]['lr'], 'training': blocks[0]['training'],
         'epsilon': max((float(s['privacy']['epsilon']) for s in summaries
                         if s['privacy']['level'] != 'none'), default=None),
         'columns': {}}
  for name, entries in columns.items():
    row['columns'][name] = {kind: {m: _mean_std([e[kind][m] for e in entries])
                                   for m in METRICS} for kind in ('global', 'personalized')}
  return row


def markdown(rows: dict[str, dict]) -> str:
  hospitals = list(next(iter(rows.values()))['columns'])
  def cell(stats):
    if not stats['n']:
      return 'n/a'
    return (f"{stats['mean']:.3f} ± {stats['std']:.3f}"
            + (f" ({stats['n']} seeds)" if stats['n'] < seeds else ''))
  seeds = max(len(row['seeds']) for row in rows.values())
  lines = []
  for metric in METRICS:
    lines += [f'**{metric}** (test sets; global → personalised; mean ± std over seeds)', '',
              '| setting | ' + ' | '.join(hospitals) + ' |',
              '|---|' + '---|' * len(hospitals)]
    for label, row in rows.items():
      cells = [f"{cell(row['columns'][h]['global'][metric])} → "
               f"{cell(row['columns'][h]['personalized'][metric])}" for h in hospitals]
      lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  for label, row in rows.items():
    eps = '' if row['epsilon'] is None else f", worst-hospital ε = {row['epsilon']:.3g} (max over seeds)"
    lines.append(f"- {label}: {row['epochs']} epoch(s) at lr {row['lr']:g}, "
                 f"{row['training']}{eps}; seeds {row['seeds']}")
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    if not _RUNS.value:
      raise ValueError('--runs: give at least one LABEL=DIR')
    rows = {}
    for entry in _RUNS.value:
      label, sep, folder = entry.rpartition('=')
      if not sep or not label or not folder:
        raise ValueError(f'--runs: {entry!r} is not LABEL=DIR')
      rows[label] = setting_row(_summaries(folder))
  except ValueError as e:
    raise app.UsageError(str(e))
  table = markdown(rows)
  print(table)
  if _OUTPUT.value:
    with open(_OUTPUT.value + '.md', 'w') as f:
      f.write(table)
    with open(_OUTPUT.value + '.json', 'w') as f:
      json.dump(rows, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
