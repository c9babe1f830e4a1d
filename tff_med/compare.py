"""Federated algorithms against local-only and pooled baselines, over seeds.

A table row per method (`local` gives one row per hospital's own model), columns
for each hospital's test set, their mean and the pooled test set; cells are
mean ± std over seeds of accuracy or ROC-AUC.
"""

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from tff_med.outputs import write_json

METRICS = ('accuracy', 'auc')


def mean_std(values) -> dict:
  """{'mean', 'std' (sample, 0 for one value), 'n'} of `values`, leaving out
  None and NaN (e.g. AUC on a one-class test set)."""
  values = np.asarray([np.nan if v is None else v for v in values], float)
  values = values[~np.isnan(values)]
  return {'mean': float(values.mean()) if len(values) else math.nan,
          'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          'n': int(len(values))}


def method_rows(summary: dict) -> dict[str, dict[str, dict[str, float]]]:
  """One run's summary.json -> {row name: {column: {metric: value}}}.

  Columns: each hospital, 'mean' (over hospitals) and 'pooled'.
  """
  def row(evaluation):
    columns = {h: m for h, m in evaluation['per_hospital'].items()}
    columns['mean'] = evaluation['mean_hospital']
    columns['pooled'] = evaluation['pooled']
    return {c: {k: v[k] for k in METRICS} for c, v in columns.items()}

  if 'local_models' in summary:
    return {f'local ({h})': row(e) for h, e in summary['local_models'].items()}
  return {summary['algorithm']: row(summary)}


def aggregate(summaries: Sequence[dict]) -> dict:
  """Many runs' summaries -> {row: {column: {metric: {'mean', 'std', 'n'}}}}.

  std is the sample standard deviation over seeds (0 for one seed); NaN
  values (AUC on a one-class test set) are left out.
  """
  values: dict = {}
  for summary in summaries:
    for name, columns in method_rows(summary).items():
      for column, metrics in columns.items():
        for metric, value in metrics.items():
          values.setdefault(name, {}).setdefault(column, {}).setdefault(metric, []).append(
              value)
  return {name: {column: {metric: mean_std(vs) for metric, vs in metrics.items()}
                 for column, metrics in columns.items()}
          for name, columns in values.items()}


def to_markdown(table: dict, hospitals: Sequence[str], title: str = '') -> str:
  """One markdown table per metric: rows methods, columns hospitals, mean, pooled."""
  columns = list(hospitals) + ['mean', 'pooled']
  lines = [f'## {title}', ''] if title else []
  for metric in METRICS:
    lines += [f'**{metric}** (test sets; mean ± std over seeds)', '',
              '| method | ' + ' | '.join(columns) + ' |',
              '|---|' + '---|' * len(columns)]
    for name, row in table.items():
      cells = []
      for c in columns:
        cell = row[c][metric]
        cells.append('n/a' if math.isnan(cell['mean'])
                     else f"{cell['mean']:.3f} ± {cell['std']:.3f}")
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


def write_comparison(summaries: Mapping[str, Sequence[dict]], seeds: Sequence[int],
                     output_dir: str, hospitals: Sequence[str],
                     title: str = '') -> tuple[dict, str]:
  """Writes comparison.{md,json} from the runs' summaries.

  Args:
    summaries: {algorithm: [summary at each seed]} (`tff_med.grid.run_grid`).
    hospitals: column order of the table.

  Returns:
    (aggregated table, markdown).
  """
  runs = [s for algorithm_runs in summaries.values() for s in algorithm_runs]
  table = aggregate(runs)
  markdown = to_markdown(table, hospitals, title)
  with open(os.path.join(output_dir, 'comparison.md'), 'w') as f:
    f.write(markdown)
  write_json(os.path.join(output_dir, 'comparison.json'),
             {'title': title, 'algorithms': list(summaries), 'seeds': list(seeds),
              'table': table,
              'runs': [{k: s.get(k) for k in ('algorithm', 'seed', 'wall_seconds')}
                       for s in runs]})
  return table, markdown
