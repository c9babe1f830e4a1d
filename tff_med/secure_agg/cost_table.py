"""What secure aggregation costs: accuracy and bytes per hospital per round against
the bit width, next to plain FedAvg, over seeds."""

import os
from collections.abc import Callable, Sequence

from tff_med.compare import mean_std
from tff_med.outputs import write_json


def run_cost_table(run_fn: Callable[[str, int, int, str], dict], modes: Sequence[str],
                   bits: Sequence[int], seeds: Sequence[int], output_dir: str,
                   title: str) -> str:
  """Trains plain FedAvg and every (mode, bit width) at every seed.

  Args:
    run_fn: (mode, bits, seed, run_dir) -> summary ('none' ignores bits).

  Writes secure_agg_cost.{md,json}; returns the markdown table.
  """
  settings = [('none', 0)] + [(m, b) for m in modes for b in bits]
  rows = []
  for mode, width in settings:
    summaries = [run_fn(mode, width, seed, os.path.join(output_dir, f'{mode}_{width}bits',
                                                        f'seed{seed}')) for seed in seeds]
    rows.append({
        'mode': mode, 'bits': width or 32,
        'pooled_accuracy': mean_std([s['pooled']['accuracy'] for s in summaries]),
        'mean_hospital_accuracy': mean_std([s['mean_hospital']['accuracy'] for s in summaries]),
        'pooled_auc': mean_std([s['pooled']['auc'] for s in summaries]),
        'bytes_per_client': mean_std([s['secure_aggregation']['bytes_per_client']
                                      for s in summaries]),
        'round_seconds': mean_std([s['wall_seconds'] / s['rounds'] for s in summaries])})
  lines = [f'## {title}', '', 'mean ± std over seeds; bytes: one hospital\'s upload per '
           'round (masking: masked vector + keys, encrypted shares and reveal)', '',
           '| aggregation | bits | pooled accuracy | mean hospital accuracy | pooled AUC | '
           'bytes / hospital / round | seconds / round |', '|---|---|---|---|---|---|---|']
  for r in rows:
    cells = [f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}"
             for k in ('pooled_accuracy', 'mean_hospital_accuracy', 'pooled_auc')]
    lines.append(f"| {'plain FedAvg (float32)' if r['mode'] == 'none' else r['mode']} | "
                 f"{r['bits']} | " + ' | '.join(cells)
                 + f" | {r['bytes_per_client']['mean']:.0f} | {r['round_seconds']['mean']:.2f} |")
  markdown = '\n'.join(lines) + '\n'
  with open(os.path.join(output_dir, 'secure_agg_cost.md'), 'w') as f:
    f.write(markdown)
  write_json(os.path.join(output_dir, 'secure_agg_cost.json'),
             {'title': title, 'seeds': list(seeds), 'rows': rows})
  return markdown
