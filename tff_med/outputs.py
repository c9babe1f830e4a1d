"""What a run leaves under `--output_dir`.

    tensorboard/       event files (tff.program.TensorBoardReleaseManager)
    metrics.csv        the same scalars, one row per round (tff.program.CSVFileReleaseManager)
    saved_model/       the final global model (`tff_med.serving`): a Keras SavedModel,
                       model inputs -> logits [B, 1], whose serving signature takes
                       raw columns, with feature_schema.json; saved_model/HOSPITAL/
                       per hospital where preprocessing is per hospital or each
                       hospital has its own model (`local`)
    summary.json       configuration and final results
"""

import asyncio
import json
import math
import os

import tensorflow as tf
import tensorflow_federated as tff

from tff_med import serving
from tff_med.data.federated_data import FederatedData


def json_safe(value):
  """NaN -> None (an undefined metric), +-inf -> "inf"/"-inf" (e.g. an infinite
  epsilon; JSON has neither); numpy scalars -> Python numbers."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
    value = value.item()
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, float) and math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  return value


def write_json(path: str, value) -> None:
  with open(path, 'w') as f:
    json.dump(json_safe(value), f, indent=2, sort_keys=False)
    f.write('\n')


TENSORBOARD_DIR = 'tensorboard'  # Under a run's output folder.


class RunOutputs:
  """Writes one run's metrics, models and summary under `output_dir`; models are
  exported with `data`'s feature schemas."""

  def __init__(self, output_dir: str, data: FederatedData):
    os.makedirs(output_dir, exist_ok=True)
    self.output_dir = output_dir
    self._data = data
    self.tensorboard_dir = os.path.join(output_dir, TENSORBOARD_DIR)
    self.csv_path = os.path.join(output_dir, 'metrics.csv')
    self.summary_path = os.path.join(output_dir, 'summary.json')
    self._release_manager = None

  def release(self, metrics: dict, round_num: int) -> None:
    """Releases nested scalar `metrics` (names joined by '/') for `round_num`.
    The event file and CSV are created at the first release, not before: their
    creation times (and the event file's name) would date the run's start."""
    if self._release_manager is None:
      self._release_manager = tff.program.GroupingReleaseManager([
          tff.program.TensorBoardReleaseManager(self.tensorboard_dir),
          tff.program.CSVFileReleaseManager(
              self.csv_path, save_mode=tff.program.CSVSaveMode.WRITE, key_fieldname='round'),
      ])
    asyncio.run(self._release_manager.release(metrics, key=round_num))

  @property
  def shared_schema(self) -> bool:
    """Whether every hospital's model inputs come from its raw columns alike."""
    schemas = list(self._data.schemas.values())
    return all(s == schemas[0] for s in schemas)

  def save_model(self, model: tf.keras.Model, hospital: str | None = None,
                 folder: str = 'saved_model') -> None:
    """Exports `model` to FOLDER/ with the shared schema, or to FOLDER/HOSPITAL/ with
    `hospital`'s schema (`serving.export`)."""
    if hospital is None and not self.shared_schema:
      raise ValueError('preprocessing is per hospital: export a model per hospital')
    schema = self._data.schemas[hospital or self._data.hospitals[0]]
    path = os.path.join(self.output_dir, folder)
    serving.export(model, schema, os.path.join(path, hospital) if hospital else path,
                   self._data.preprocessing)

  def save_models(self, models: dict[str, tf.keras.Model]) -> list[tuple[str, str]]:
    """Exports a plan's models (`RoundPlan.models`): a hospital's own model to
    saved_model/HOSPITAL/; a model of all hospitals ('global', 'pooled') to
    saved_model/, or, where preprocessing is per hospital, to
    saved_model/HOSPITAL/ for every hospital. Returns (model name, folder
    relative to the output folder) per export."""
    saved = []
    for name, model in models.items():
      own = name in self._data.schemas
      for hospital in ([name] if own else
                       [None] if self.shared_schema else self._data.hospitals):
        self.save_model(model, hospital)
        saved.append((name, 'saved_model' if hospital is None
                      else os.path.join('saved_model', hospital)))
    return saved

  def write_summary(self, summary: dict) -> None:
    write_json(self.summary_path, summary)
