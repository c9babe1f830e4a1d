"""What a run leaves under `--output_dir`.

    tensorboard/       event files (tff.program.TensorBoardReleaseManager)
    metrics.csv        the same scalars, one row per round (tff.program.CSVFileReleaseManager)
    saved_model/       the final global model, Keras SavedModel: logits [B, 1]
                       (`local`: saved_model/HOSPITAL/ per hospital)
    summary.json       configuration and final results
"""

import asyncio
import json
import math
import os

import tensorflow as tf
import tensorflow_federated as tff


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
  """Writes one run's metrics, model and summary under `output_dir`."""

  def __init__(self, output_dir: str):
    os.makedirs(output_dir, exist_ok=True)
    self.output_dir = output_dir
    self.tensorboard_dir = os.path.join(output_dir, TENSORBOARD_DIR)
    self.csv_path = os.path.join(output_dir, 'metrics.csv')
    self.model_dir = os.path.join(output_dir, 'saved_model')
    self.summary_path = os.path.join(output_dir, 'summary.json')
    self._release_manager = tff.program.GroupingReleaseManager([
        tff.program.TensorBoardReleaseManager(self.tensorboard_dir),
        tff.program.CSVFileReleaseManager(
            self.csv_path, save_mode=tff.program.CSVSaveMode.WRITE, key_fieldname='round'),
    ])

  def release(self, metrics: dict, round_num: int) -> None:
    """Releases nested scalar `metrics` (names joined by '/') for `round_num`."""
    asyncio.run(self._release_manager.release(metrics, key=round_num))

  def save_model(self, model: tf.keras.Model, hospital: str | None = None,
                 folder: str = 'saved_model') -> None:
    """Saves to FOLDER/ (or FOLDER/HOSPITAL/ for one of several models)."""
    path = os.path.join(self.output_dir, folder)
    model.save(os.path.join(path, hospital) if hospital else path, save_format='tf')

  def write_summary(self, summary: dict) -> None:
    write_json(self.summary_path, summary)
