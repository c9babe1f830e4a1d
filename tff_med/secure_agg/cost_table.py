"""What secure aggregation costs: accuracy and bytes per hospital per round against
the bit width, next to plain FedAvg, over seeds."""

import os
from collections.abc import Mapping, Sequence

from tff_med.compare import mean_std
from tff_med.outputs import write_json


def cost_settings(modes: Sequence[str], bits: Sequence[int]) -> list[tuple[str, int]]:
  """The table's rows as (mode, bit width): plain FedAvg ('none', 0) first, then
  every mode at every width."""
  return [('none', 0)] + [(m, b) for m in modes for b in bits]


def setting_name(mode: str, width: int) -> str:
  """The grid setting (and folder) of a row: `masking_16bits`, `none_0bits`."""
  return f'{mode}_{width}bits'


def write_cost_table(summaries: Mapping[str, Sequence[dict]],
                     settings: Sequence[tuple[str, int]], seeds: Sequence[int],
                     output_dir: str, title: str) -> str:
  """Writes secure_agg_cost.{md,json} from the runs' summaries.

  Args:
    summaries: {setting_name(mode, width): [summary at each seed]}
      (`tff_med.grid.run_grid`).
    settings: the rows, as `cost_settings`.

  Returns:
    the markdown table.
  """
  rows = []
  for mode, width in settings:
    runs = summaries[setting_name(mode, width)]
    rows.append({
        'mode': mode, 'bits': width or 32,
        'pooled_accuracy': mean_std([s['pooled']['accuracy'] for s in runs]),
        'mean_hospital_accuracy': mean_std([s['mean_hospital']['accuracy'] for s in runs]),
        'pooled_auc': mean_std([s['pooled']['auc'] for s in runs]),
        'bytes_per_client': mean_std([s['secure_aggregation']['bytes_per_client']
                                      for s in runs]),
        'round_seconds': mean_std([s['wall_seconds'] / s['rounds'] for s in runs])})
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
