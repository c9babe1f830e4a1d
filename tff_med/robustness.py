"""Robust aggregation against a simulated bad hospital: every defence × every attack
over seeds, as tables.

A setting per (defence, attack) pair (`setting_name`: `DEFENCE+ATTACK`), each the
same run with `robust.name` and `attack.name` set. A pair the library refuses
(`training.build_plan` raises ValueError, e.g. a trimmed mean that would drop
every update of a round) is left out of the grid and reported as refused with
the reason; the others train.

Tables: one per metric (pooled test set and mean over hospitals, accuracy and
ROC-AUC), rows defences, columns attacks, cells mean ± std over seeds (a seed
whose model diverged to NaN outputs is counted and left out); and what
each defence costs without an attack: its no-attack cells minus those of
`robust.name=none`, seed by seed (mean ± std of the paired differences).
"""

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

from tff_med import grid
from tff_med.compare import mean_std
from tff_med.config import AttackConfig, RobustConfig, TrainConfig
from tff_med.outputs import write_json
from tff_med.privacy_sweep import COLUMNS, summarize

NONE = 'none'
# (summary key, metric) -> table heading.
HEADINGS = {('pooled', 'accuracy'): 'pooled test set, accuracy',
            ('pooled', 'auc'): 'pooled test set, ROC-AUC',
            ('mean_hospital', 'accuracy'): 'mean over hospitals\' test sets, accuracy',
            ('mean_hospital', 'auc'): 'mean over hospitals\' test sets, ROC-AUC'}


def setting_name(defence: str, attack: str) -> str:
  """The grid setting (and folder) of a pair: `median+label_flip`."""
  return f'{defence}+{attack}'


def settings(base: TrainConfig, defences: Sequence[str], attacks: Sequence[str],
             attacker: str, robust_norm: float | None = None, robust_trim: int = 1,
             attack_scale: float = AttackConfig.scale) -> dict[str, TrainConfig]:
  """{setting_name(d, a): `base` with robust d and attack a} for every pair.

  `robust_norm` reaches norm_bound and zeroing only, `robust_trim` trimmed_mean
  only, `attack_scale` scaled_update and random_update only (the fields the
  others would refuse); attack 'none' has no attacker.
  """
  configs = {}
  for defence in defences:
    robust = RobustConfig(
        defence, robust_norm if defence in ('norm_bound', 'zeroing') else None,
        robust_trim if defence == 'trimmed_mean' else RobustConfig.trim)
    for attack in attacks:
      scale = (attack_scale if attack in ('scaled_update', 'random_update')
               else AttackConfig.scale)
      configs[setting_name(defence, attack)] = dataclasses.replace(
          base, robust=robust,
          attack=AttackConfig(attack, None if attack == NONE else attacker, scale))
  return configs


def plan(configs: Mapping[str, grid.Setting], inputs: Mapping[int, grid.SeedInputs]
         ) -> tuple[dict, dict[str, str]]:
  """`grid.plan_grid` setting by setting: (plans of the settings it accepts,
  {refused setting: the library's reason})."""
  planned, refused = {}, {}
  for name, setting in configs.items():
    try:
      planned.update(grid.plan_grid({name: setting}, inputs))
    except ValueError as e:
      refused[name] = str(e.__cause__ or e)
  return planned, refused


def _paired_differences(runs: Sequence[dict], baseline: Sequence[dict]) -> dict:
  """{'pooled/accuracy': mean_std(run - baseline at the same seed), ...}."""
  by_seed = {s['seed']: s for s in baseline}
  return {f'{a}/{b}': mean_std([s[a][b] - by_seed[s['seed']][a][b] for s in runs
                                if s['seed'] in by_seed
                                and None not in (s[a][b], by_seed[s['seed']][a][b])])
          for a, b in COLUMNS}


def _cell(runs: Sequence[dict]) -> dict:
  """`summarize` of a pair's seeds, with 'diverged': the number of seeds whose
  model's outputs were NaN (their metrics are NaN and left out of the means)."""
  diverged = sum(math.isnan(run['pooled']['accuracy']) for run in runs)
  return {**summarize(runs), **({'diverged': diverged, 'seeds': len(runs)} if diverged else {})}


def table(summaries: Mapping[str, Sequence[dict]], refused: Mapping[str, str],
          defences: Sequence[str], attacks: Sequence[str]) -> dict:
  """The runs' summaries -> {'cells': {defence: {attack: cell}}, 'cost_without_attack':
  {defence: cell}}.

  A cell is `privacy_sweep.summarize`'s {'pooled/accuracy': {mean, std, n}, ...}
  over the pair's seeds (with 'diverged' and 'seeds' when a seed's model
  diverged), or {'refused': reason}. cost_without_attack (present when
  'none' is among both the defences and the attacks, and the no-attack run of
  'none' trained): each trained defence's no-attack runs minus 'none''s, paired by seed.
  """
  cells = {}
  for defence in defences:
    cells[defence] = {}
    for attack in attacks:
      name = setting_name(defence, attack)
      cells[defence][attack] = ({'refused': refused[name]} if name in refused
                                else _cell(summaries[name]))
  result = {'cells': cells}
  baseline = setting_name(NONE, NONE)
  if NONE in attacks and baseline in summaries:
    result['cost_without_attack'] = {
        d: _paired_differences(summaries[setting_name(d, NONE)], summaries[baseline])
        for d in defences if setting_name(d, NONE) in summaries}
  return result


def _number(cell: dict, signed: bool = False) -> str:
  if math.isnan(cell['mean']):
    return 'n/a'
  return f"{cell['mean']:{'+' if signed else ''}.3f} ± {cell['std']:.3f}"


def _text(cell: dict, key: str, reasons: list[str]) -> str:
  """One table cell: the refusal's footnote, or mean ± std with the diverged seeds."""
  if 'refused' in cell:
    return f"refused [{reasons.index(cell['refused']) + 1}]"
  if not cell.get('diverged'):
    return _number(cell[key])
  if cell['diverged'] == cell['seeds']:
    return f"diverged ({cell['seeds']} of {cell['seeds']} seeds)"
  return f"{_number(cell[key])} ({cell['diverged']} of {cell['seeds']} seeds diverged)"


def to_markdown(rows: dict, attacks: Sequence[str], caption: str) -> str:
  """Markdown of `table`'s result: a table per metric, refusals as footnotes, then
  the cost without attack."""
  reasons = []
  for row in rows['cells'].values():
    for cell in row.values():
      if 'refused' in cell and cell['refused'] not in reasons:
        reasons.append(cell['refused'])
  lines = [caption, '']
  for (scope, metric), heading in HEADINGS.items():
    lines += [f'**{heading}**', '', '| defence \\ attack | ' + ' | '.join(attacks) + ' |',
              '|---|' + '---|' * len(attacks)]
    for defence, row in rows['cells'].items():
      cells = [_text(row[a], f'{scope}/{metric}', reasons) for a in attacks]
      lines.append(f'| {defence} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  lines += [f'[{k}] refused: {reason}' for k, reason in enumerate(reasons, 1)]
  if reasons:
    lines.append('')
  if 'cost_without_attack' in rows:
    lines += ['**What each defence costs without attack** (its no-attack cells minus '
              'those of `none`, paired by seed: mean ± std)', '',
              '| defence | ' + ' | '.join(HEADINGS[c] for c in COLUMNS) + ' |',
              '|---|' + '---|' * len(COLUMNS)]
    for defence, cell in rows['cost_without_attack'].items():
      lines.append(f'| {defence} | ' + ' | '.join(
          _number(cell[f'{a}/{b}'], signed=True) for a, b in COLUMNS) + ' |')
    lines.append('')
  return '\n'.join(lines)


def write_robustness(summaries: Mapping[str, Sequence[dict]], refused: Mapping[str, str],
                     defences: Sequence[str], attacks: Sequence[str], attacker: str,
                     seeds: Sequence[int], output_dir: str, title: str,
                     attack_scale: float = AttackConfig.scale) -> tuple[dict, str]:
  """Writes robustness.{md,json} from the runs' summaries.

  Args:
    summaries: {setting_name(defence, attack): [summary at each seed]}
      (`tff_med.grid.run_grid`) for every pair not in `refused`.
    refused: {setting: reason} (`plan`).
    attacker: the attacking hospital (named in the caption).

  Returns:
    (`table`'s result, markdown).
  """
  rows = table(summaries, refused, defences, attacks)
  scaled = [a for a in attacks if a in ('scaled_update', 'random_update')]
  caption = (f'Attacker: {attacker}' + (f' ({", ".join(scaled)} scale {attack_scale:g})'
                                         if scaled else '')
             + f'; rows: --robust, columns: --attack; mean ± std over {len(seeds)} '
             f'seed{"s" if len(seeds) != 1 else ""} ({", ".join(map(str, seeds))}).')
  markdown = f'## {title}\n\n' + to_markdown(rows, attacks, caption)
  with open(os.path.join(output_dir, 'robustness.md'), 'w') as f:
    f.write(markdown)
  write_json(os.path.join(output_dir, 'robustness.json'),
             {'title': title, 'attacker': attacker, 'attack_scale': attack_scale,
              'defences': list(defences), 'attacks': list(attacks), 'seeds': list(seeds),
              **rows,
              'runs': [{'setting': name, **{k: s.get(k) for k in ('seed', 'wall_seconds')}}
                       for name, runs in summaries.items() for s in runs]})
  return rows, markdown
