"""Many training runs: named settings × seeds, each run in `OUTPUT_DIR/SETTING/seedK/`.

`run_grid` first builds every run's plan (`training.build_plan`: every field
checked, DP noise calibrated), so that a bad setting stops the grid before any
training, then trains setting by setting, seed by seed, and returns the runs'
summaries. The tables (`compare`, `privacy_sweep`, `privacy_report`,
`secure_agg.cost_table`) are made from those summaries.

A setting is a `TrainConfig`, or a function of the seed that returns one; either
way the run's config gets that seed. A run whose folder holds saved program
state resumes from its last completed round (`resume`, `overwrite`: as
`training.run`), so a grid stopped half way continues where it stopped.
"""

import contextlib
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tff_med import runtime
from tff_med import training
from tff_med.config import TrainConfig
from tff_med.data.federated_data import FederatedData

Setting = TrainConfig | Callable[[int], TrainConfig]
_NAME = re.compile(r'[A-Za-z0-9_.=+-]+')


class SeedInputs(Protocol):
  """One seed's data and model (e.g. `experiments.flags.RunInputs`)."""
  data: FederatedData
  keras_model_fn: Callable[[], Any]

  def summary_fields(self) -> dict:
    """Merged into the run's summary."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One (setting, seed): its config and `training.build_plan`'s result."""
  config: TrainConfig
  plan: Any


class Interrupted(RuntimeError):
  """A run stopped before its last round; its state is saved, so the same grid
  run again resumes it."""


def run_dir(output_dir: str, setting: str, seed: int) -> str:
  """Where the run of `setting` at `seed` writes its outputs."""
  return os.path.join(output_dir, setting, f'seed{seed}')


def config_for(setting: Setting, seed: int) -> TrainConfig:
  """The setting's config at `seed`."""
  config = setting if isinstance(setting, TrainConfig) else setting(seed)
  return dataclasses.replace(config, seed=seed)


def _quiet(line: str) -> None:
  del line


def plan_grid(settings: Mapping[str, Setting], inputs: Mapping[int, SeedInputs]
              ) -> dict[tuple[str, int], PlannedRun]:
  """Every (setting, seed)'s config and plan, before anything trains.

  Args:
    settings: {name: setting}; a name is a folder name (letters, digits, _ . = + -).
    inputs: {seed: that seed's data and model}.

  Raises:
    ValueError: no settings or seeds, a bad name, or a config that
      `training.build_plan` refuses (`SETTING, seed K: FIELD=value: reason`).
  """
  if not settings or not inputs:
    raise ValueError('a grid needs at least one setting and one seed')
  planned = {}
  for name, setting in settings.items():
    if not _NAME.fullmatch(name) or name in ('.', '..'):
      raise ValueError(f'setting {name!r}: not a folder name (letters, digits, _ . = + -)')
    for seed, seed_inputs in inputs.items():
      try:
        config = config_for(setting, seed)
        plan = training.build_plan(seed_inputs.data, seed_inputs.keras_model_fn, config,
                                   log=_quiet)
      except ValueError as e:
        raise ValueError(f'{name}, seed {seed}: {e}') from e
      planned[name, seed] = PlannedRun(config, plan)
  return planned


def run_grid(settings: Mapping[str, Setting], inputs: Mapping[int, SeedInputs],
             output_dir: str, *, planned: Mapping[tuple[str, int], PlannedRun] | None = None,
             log: Callable[[str], None] = functools.partial(print, flush=True),
             resume: bool = True, overwrite: bool = False) -> dict[str, list[dict]]:
  """Trains every setting at every seed into `run_dir(output_dir, setting, seed)`.

  Args:
    settings, inputs: as `plan_grid`; settings train in their order, each at
      every seed of `inputs` in its order.
    planned: `plan_grid(settings, inputs)` when already built; built here (for
      every run, before the first trains) otherwise.
    log: gets a line `== SETTING, seed K` before each run.
    resume, overwrite: passed to `training.run` for every run.

  Returns:
    {setting: [summary at each seed]}.

  Raises:
    ValueError: as `plan_grid`, before any training.
    Interrupted: a run stopped before its last round (the runs after it did not start).
  """
  planned = planned if planned is not None else plan_grid(settings, inputs)
  os.makedirs(output_dir, exist_ok=True)
  summaries = {}
  with contextlib.ExitStack() as stack:
    context = None  # Consecutive runs with the same context share it (and its worker).
    for name in settings:
      summaries[name] = []
      for seed, seed_inputs in inputs.items():
        log(f'== {name}, seed {seed}')
        run = planned[name, seed]
        key = (run.plan.secure_sums, run.config.max_concurrent_computation_calls)
        if key != context:
          stack.close()
          stack.enter_context(runtime.execution_context(*key))
          context = key
        summaries[name].append(_run(run, seed_inputs, run_dir(output_dir, name, seed),
                                    resume, overwrite, f'{name}, seed {seed}'))
  return summaries


def _run(run: PlannedRun, seed_inputs: SeedInputs, path: str, resume: bool, overwrite: bool,
         what: str) -> dict:
  """One run of the grid; Interrupted if it stopped before its last round."""
  summary = training.run(seed_inputs.data, seed_inputs.keras_model_fn, run.config,
                         output_dir=path, plan=run.plan, log=_quiet,
                         extra_summary=seed_inputs.summary_fields(), resume=resume,
                         overwrite=overwrite)
  if summary.get('status') == 'interrupted':
    raise Interrupted(f'{what} stopped before its last round; its state is saved in {path}')
  return summary
