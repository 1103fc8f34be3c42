"""SafeWatch models: ONNX files, their cards, the shared feature pipeline, training code.

The gateway uses :func:`load_model` (verified against the card), the feature
pipelines in :mod:`models.features` and the card types. Training
(:mod:`models._train`, scikit-learn + skl2onnx) and the catalog's datasets
and evaluations take plain numpy arrays; ``safewatch models train|eval``
feeds them synthetic or site histories.
"""

from pathlib import Path

from models._card import (
    CardError,
    Decision,
    FeatureSpec,
    ModelCard,
    OutputSpec,
    TensorSpec,
    TrainingInfo,
    file_sha256,
    read_card,
    write_card,
)
from models._catalog import CATALOG, METHANE_FORECAST, ROOF_TIME_TO_RED, VIBRATION_WEAR, ModelSpec
from models._runtime import LoadedModel, ModelRefused, compute_features, load_model, reduce_outputs
from models.features import PIPELINE_VERSION, FeatureError

MODELS_DIR = Path(__file__).resolve().parent
"""Where the shipped ``*.onnx`` files and their cards live."""

__all__ = [
    "CATALOG",
    "METHANE_FORECAST",
    "MODELS_DIR",
    "PIPELINE_VERSION",
    "ROOF_TIME_TO_RED",
    "VIBRATION_WEAR",
    "CardError",
    "Decision",
    "FeatureError",
    "FeatureSpec",
    "LoadedModel",
    "ModelCard",
    "ModelRefused",
    "ModelSpec",
    "OutputSpec",
    "TensorSpec",
    "TrainingInfo",
    "compute_features",
    "file_sha256",
    "load_model",
    "read_card",
    "reduce_outputs",
    "write_card",
]
