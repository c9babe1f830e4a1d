"""Utility against privacy: runs at several target epsilons over seeds, tabulated and plotted.

Each target epsilon is calibrated (smallest noise multiplier that meets it for
the run's rounds and sampling); epsilon = inf trains with clipping and no noise.
The non-private federated model and the local-only models are reference lines.
"""

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.ticker  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from tff_med.compare import mean_std
from tff_med.outputs import write_json

COLUMNS = (('pooled', 'accuracy'), ('pooled', 'auc'), ('mean_hospital', 'accuracy'),
           ('mean_hospital', 'auc'))


def summarize(summaries: Sequence[dict]) -> dict:
  """Seeds' summaries of one setting -> {'pooled/accuracy': {mean, std}, ...,
  'epsilon': worst achieved (max over seeds), 'noise_multiplier': mean}."""
  row = {f'{a}/{b}': mean_std([s[a][b] for s in summaries]) for a, b in COLUMNS}
  if summaries[0].get('privacy', {}).get('level', 'none') != 'none':
    row['epsilon'] = max(s['privacy']['epsilon'] for s in summaries)
    row['noise_multiplier'] = float(np.mean([s['privacy']['noise_multiplier']
                                             for s in summaries]))
  return row


def to_markdown(rows: dict, references: dict, delta: float) -> str:
  header = ('| target ε | noise multiplier | achieved ε (worst hospital, worst seed) | '
            + ' | '.join(f'{a} {b}' for a, b in COLUMNS) + ' |')
  lines = [f'δ = {delta:g}; mean ± std over seeds', '', header,
           '|---|---|---|' + '---|' * len(COLUMNS)]

  def cells(row):
    return ' | '.join(f"{row[f'{a}/{b}']['mean']:.3f} ± {row[f'{a}/{b}']['std']:.3f}"
                      for a, b in COLUMNS)

  for target, row in rows.items():
    lines.append(f"| {target:g} | {row['noise_multiplier']:.3f} | {row['epsilon']:.3g} | "
                 f'{cells(row)} |')
  for name, row in references.items():
    lines.append(f'| {name} | – | – | {cells(row)} |')
  return '\n'.join(lines) + '\n'


def epsilon_positions(targets) -> tuple[list[float], float]:
  """x positions for target epsilons on a log axis: no DP (inf or None) goes to
  the right edge, 4x the largest finite target. Returns (xs, right edge)."""
  finite = [t for t in targets if t is not None and math.isfinite(t)]
  right = max(finite) * 4 if finite else 1.0
  return [t if t is not None and math.isfinite(t) else right for t in targets], right


def epsilon_axis(ax, xs: Sequence[float], right: float, label: str) -> None:
  """Log-scale x axis with one tick per target, the right edge labelled ∞."""
  ax.set_xscale('log')
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.set_xticks(xs, [f'{x:g}' if x != right else '∞' for x in xs])
  ax.set_xlabel(label)


def plot(rows: dict, references: dict, path: str, title: str) -> None:
  """Accuracy and AUC (pooled test set, mean over hospitals) against target epsilon,
  log scale; epsilon = inf drawn at the right edge; the references' mean over
  hospitals as flat lines."""
  xs, right = epsilon_positions(rows)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, metric in zip(axes, ('accuracy', 'auc')):
    for scope, style in (('pooled', 'o-'), ('mean_hospital', 's--')):
      key = f'{scope}/{metric}'
      ax.errorbar(xs, [r[key]['mean'] for r in rows.values()],
                  yerr=[r[key]['std'] for r in rows.values()], fmt=style, capsize=3,
                  label=f'DP, {scope.replace("_", " ")}')
    for (name, row), color in zip(references.items(), ('tab:green', 'tab:red')):
      ax.axhline(row[f'mean_hospital/{metric}']['mean'], color=color, linestyle=':',
                 label=f'{name}, mean hospital')
    epsilon_axis(ax, xs, right, 'target ε (per record, worst hospital)')
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def setting_name(target_epsilon: float) -> str:
  """The grid setting (and folder) of a target epsilon: `epsilon_1`, `epsilon_inf`."""
  return f'epsilon_{target_epsilon:g}'


# Reference rows' grid settings (and folders): the non-private federated model
# and the local-only models; REFERENCES: table label -> setting.
NON_PRIVATE, LOCAL = 'non_private', 'local'
REFERENCES = {'non-private': NON_PRIVATE, 'local only': LOCAL}


def write_privacy_sweep(summaries: Mapping[str, Sequence[dict]], epsilons: Sequence[float],
                        seeds: Sequence[int], output_dir: str,
                        title: str) -> tuple[dict, str]:
  """Writes privacy_sweep.{md,json,png} from the runs' summaries.

  Args:
    summaries: {setting: [summary at each seed]} (`tff_med.grid.run_grid`), with a
      setting `setting_name(e)` for each target epsilon e and one per REFERENCES
      value (the non-private federated model, the local-only models).

  Returns:
    (rows by target epsilon, markdown).
  """
  rows = {target: summarize(summaries[setting_name(target)]) for target in epsilons}
  references = {label: summarize(summaries[name]) for label, name in REFERENCES.items()}
  delta = summaries[setting_name(epsilons[0])][0]['privacy']['delta']
  markdown = to_markdown(rows, references, delta)
  with open(os.path.join(output_dir, 'privacy_sweep.md'), 'w') as f:
    f.write(f'## {title}\n\n' + markdown)
  write_json(os.path.join(output_dir, 'privacy_sweep.json'),
             {'title': title, 'delta': delta, 'seeds': list(seeds),
              'rows': {f'{t:g}': r for t, r in rows.items()}, 'references': references})
  plot(rows, references, os.path.join(output_dir, 'privacy_sweep.png'), title)
  return rows, markdown
