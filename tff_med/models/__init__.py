"""Keras models for hospital data and their TFF wrapping."""

from tff_med.models.keras_models import MODELS, build_keras_model, ModelConfig
from tff_med.models.tff_model import metrics, loss, tff_model_fn
