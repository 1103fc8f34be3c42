"""Edge inference: ONNX models as advisory pre-alarm sources, off the safety path."""

from edge.inference._rules import ForecastRule
from edge.inference._runner import Batch, InferenceError, InferenceRunner, OutputTag, install

__all__ = ["Batch", "ForecastRule", "InferenceError", "InferenceRunner", "OutputTag", "install"]
