"""What did privacy buy, and what did it cost: one report over privacy settings.

Every setting (non-private, DP at several target epsilons, the secure
aggregation variants) is trained on the same data and seeds (`tff_med.grid`)
and audited with membership-inference attacks. The report puts utility
(accuracy, AUC), the accountant's epsilon, the attacker's AUC and TPR at 1% FPR
(overall and per hospital), the audit's epsilon lower bound and the bytes each
hospital sends side by side, as markdown, HTML and PNG plots.
"""

import dataclasses
import html
import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from tff_med.compare import mean_std
from tff_med.outputs import write_json
from tff_med.privacy_sweep import epsilon_axis, epsilon_positions


@dataclasses.dataclass(frozen=True)
class Setting:
  """One column of the report: `target_epsilon` None = no DP; `secure_agg` a mode."""
  name: str
  target_epsilon: float | None = None
  secure_agg: str = 'none'


def folder(setting: Setting) -> str:
  """The setting's grid name and folder: its name with `_` for spaces."""
  return setting.name.replace(' ', '_')


def summarize(runs: Sequence[tuple[dict, dict]]) -> dict:
  """[(summary, audit result)] over seeds -> one report row (mean/std over seeds)."""
  audits = [a['global_model']['overall'] for _, a in runs]
  overall = [audit['best'] or {} for audit in audits]
  hospitals = runs[0][1]['global_model']['per_hospital']
  privacy = [s.get('privacy') for s, _ in runs]
  return {
      'pooled_accuracy': mean_std([s['pooled']['accuracy'] for s, _ in runs]),
      'pooled_auc': mean_std([s['pooled']['auc'] for s, _ in runs]),
      'mean_hospital_accuracy': mean_std([s['mean_hospital']['accuracy'] for s, _ in runs]),
      'epsilon': max(p['epsilon'] for p in privacy) if privacy[0] else math.inf,
      'attack_auc': mean_std([b.get('auc') for b in overall]),
      'attack_tpr_at_1pct_fpr': mean_std([b.get('tpr_at_fpr_1pct') for b in overall]),
      # Each seed's bound holds with confidence 1 - alpha, so does their minimum
      # (a mean or maximum over seeds would not).
      'epsilon_lower_bound': float(np.min([audit['epsilon_lower_bound'] for audit in audits])),
      'epsilon_lower_bound_confidence': audits[0]['epsilon_lower_bound_confidence'],
      'max_certifiable_epsilon': float(np.min([
          audit['epsilon_lower_bound_details'].get('max_certifiable', math.nan)
          for audit in audits])),
      'attack_auc_per_hospital': {
          h: mean_std([(a['global_model']['per_hospital'][h]['best'] or {}).get('auc')
                    for _, a in runs]) for h in hospitals},
      'local_model_attack_auc': mean_std([(a.get('local_model', {}).get('best') or {}).get('auc')
                                       for _, a in runs]),
      'bytes_per_client': float(np.mean([s['secure_aggregation']['bytes_per_client']
                                         for s, _ in runs])),
  }


def _cell(stat: dict) -> str:
  return 'n/a' if math.isnan(stat['mean']) else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _table(rows: dict) -> tuple[list[str], list[list[str]]]:
  first = next(iter(rows.values()))
  hospitals = list(first['attack_auc_per_hospital'])
  header = (['setting', 'accountant ε', 'pooled accuracy', 'pooled AUC',
             'mean hospital accuracy', 'attack AUC (overall)', 'TPR @ 1% FPR',
             f"ε lower bound ({first['epsilon_lower_bound_confidence']:.0%}, min over "
             'seeds; max certifiable)', 'bytes / hospital / round']
            + [f'attack AUC {h}' for h in hospitals] + ['attack AUC, local-only model'])
  body = []
  for name, row in rows.items():
    body.append([name, f"{row['epsilon']:.3g}"] + [_cell(row[k]) for k in (
        'pooled_accuracy', 'pooled_auc', 'mean_hospital_accuracy', 'attack_auc',
        'attack_tpr_at_1pct_fpr')]
                + [f"{row['epsilon_lower_bound']:.3f} ({row['max_certifiable_epsilon']:.2f})",
                   f"{row['bytes_per_client']:.0f}"]
                + [_cell(row['attack_auc_per_hospital'][h]) for h in hospitals]
                + [_cell(row['local_model_attack_auc'])])
  return header, body


def plot(rows: dict, settings: Sequence[Setting], path: str, title: str) -> None:
  """Utility, attack AUC (overall and per hospital) and TPR at 1% FPR against the
  target epsilon (log scale; no DP drawn at the right edge as ∞)."""
  dp = [s for s in settings if s.secure_agg == 'none']
  xs, right = epsilon_positions([s.target_epsilon for s in dp])
  xs, dp = zip(*sorted(zip(xs, dp), key=lambda pair: pair[0]))
  series = [rows[s.name] for s in dp]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  panels = (('utility', [('pooled accuracy', 'pooled_accuracy'), ('pooled AUC', 'pooled_auc'),
                         ('mean hospital accuracy', 'mean_hospital_accuracy')]),
            ('membership attack AUC', [('overall', 'attack_auc')] + [
                (h, ('attack_auc_per_hospital', h)) for h in series[0]['attack_auc_per_hospital']]),
            ('attack TPR at 1% FPR (overall)', [('overall', 'attack_tpr_at_1pct_fpr')]))
  for ax, (ylabel, lines) in zip(axes, panels):
    for label, key in lines:
      stats = [r[key[0]][key[1]] if isinstance(key, tuple) else r[key] for r in series]
      ax.errorbar(xs, [s['mean'] for s in stats], yerr=[s['std'] for s in stats],
                  fmt='o-', capsize=3, label=label)
    for s in settings:
      if s.secure_agg != 'none' and ylabel == 'utility':
        ax.plot([right], [rows[s.name]['pooled_accuracy']['mean']], 'k^')
    if ylabel == 'membership attack AUC':
      ax.axhline(0.5, color='grey', linestyle=':', label='chance')
    epsilon_axis(ax, xs, right, 'target ε')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title + ' (▲: secure aggregation variants, no DP)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(rows: dict, settings: Sequence[Setting], output_dir: str, title: str,
                 notes: str) -> str:
  """Writes privacy_report.{md,html,json,png}; returns the markdown."""
  plot(rows, settings, os.path.join(output_dir, 'privacy_report.png'), title)
  header, body = _table(rows)
  markdown = '\n'.join(
      [f'# {title}', '', notes, '', '| ' + ' | '.join(header) + ' |',
       '|' + '---|' * len(header)] + ['| ' + ' | '.join(r) + ' |' for r in body]
      + ['', '![privacy report](privacy_report.png)', ''])
  with open(os.path.join(output_dir, 'privacy_report.md'), 'w') as f:
    f.write(markdown)
  cells = lambda row, tag: ''.join(f'<{tag}>{html.escape(c)}</{tag}>' for c in row)
  with open(os.path.join(output_dir, 'privacy_report.html'), 'w') as f:
    f.write(f'<!doctype html><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p>'
            '<table border="1" cellpadding="4"><tr>' + cells(header, 'th') + '</tr>'
            + ''.join(f'<tr>{cells(r, "td")}</tr>' for r in body)
            + '</table><p><img src="privacy_report.png" width="100%"></p>')
  write_json(os.path.join(output_dir, 'privacy_report.json'),
             {'title': title, 'notes': notes, 'rows': rows,
              'settings': [dataclasses.asdict(s) for s in settings]})
  return markdown


def write_privacy_report(summaries: Mapping[str, Sequence[dict]],
                         audits: Mapping[str, Sequence[dict]], settings: Sequence[Setting],
                         output_dir: str, title: str, notes: str) -> str:
  """Writes the report from the runs' summaries and audit results.

  Args:
    summaries, audits: {folder(setting): [summary / audit result at each seed]}
      (`tff_med.grid.run_grid`, `tff_med.audit.run_audit.audit_run`).
  """
  rows = {s.name: summarize(list(zip(summaries[folder(s)], audits[folder(s)])))
          for s in settings}
  return write_report(rows, settings, output_dir, title, notes)
