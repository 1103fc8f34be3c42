"""Edge inference: ONNX models as advisory pre-alarm sources, off the safety path."""

from edge.inference._rules import ForecastRule
from edge.inference._runner import Batch, InferenceError, InferenceRunner, OutputTag, install
from edge.inference._timelapse import TIMELAPSE_NOTE, install_timelapse

__all__ = [
    "TIMELAPSE_NOTE",
    "Batch",
    "ForecastRule",
    "InferenceError",
    "InferenceRunner",
    "OutputTag",
    "install",
    "install_timelapse",
]
