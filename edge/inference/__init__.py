"""Edge inference: ONNX models as advisory pre-alarm sources, off the safety path."""

from edge.inference._rules import ForecastRule
from edge.inference._runner import Batch, InferenceError, InferenceRunner, OutputTag, install
from edge.inference._timelapse import TIMELAPSE_NOTE, install_timelapse
from edge.inference._waveform import WaveformReader

__all__ = [
    "TIMELAPSE_NOTE",
    "Batch",
    "ForecastRule",
    "InferenceError",
    "InferenceRunner",
    "OutputTag",
    "WaveformReader",
    "install",
    "install_timelapse",
]
