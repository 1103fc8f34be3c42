"""Fit a catalog model on a dataset and export it to ONNX (training time only).

scikit-learn, skl2onnx and onnx are imported inside the functions: the
gateway imports :mod:`models` for cards, features and the runtime loader and
never needs them (``pip install 'safewatch[train]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models._catalog import Dataset, ModelSpec

__all__ = ["ONNX_OPSET", "TrainingUnavailable", "export_onnx", "fit"]

ONNX_OPSET = 17  # ai.onnx opset; onnxruntime >= 1.18 runs it
ML_OPSET = 3


class TrainingUnavailable(RuntimeError):
    """The training extras are not installed."""


def _estimator(spec: ModelSpec, seed: int, params: dict[str, Any]) -> Any:
    try:
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    except ImportError as exc:
        raise TrainingUnavailable(
            "training needs scikit-learn, skl2onnx and onnx: pip install 'safewatch[train]'"
        ) from exc
    cls = (
        GradientBoostingClassifier
        if spec.estimator == "classifier"
        else (GradientBoostingRegressor)
    )
    return cls(random_state=seed, **params)


def default_params(spec: ModelSpec) -> dict[str, Any]:
    if spec.name == "roof-time-to-red":
        return {"n_estimators": 150, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.8}
    if spec.name == "vibration-wear":
        return {"n_estimators": 80, "max_depth": 3, "learning_rate": 0.1, "subsample": 0.8}
    return {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1, "subsample": 0.8}


def fit(spec: ModelSpec, data: Dataset, seed: int, params: dict[str, Any]) -> Any:
    estimator = _estimator(spec, seed, params)
    target = data.target if spec.estimator == "regressor" else data.target.astype(np.int64)
    estimator.fit(data.features, target)
    return estimator


def export_onnx(spec: ModelSpec, estimator: Any, path: Path) -> bytes:
    """Convert to ONNX with input ``features`` (float32, [batch, n]) and write it atomically."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise TrainingUnavailable(
            "export needs skl2onnx and onnx: pip install 'safewatch[train]'"
        ) from exc
    width = len(spec.features.names)
    options: dict[int, dict[str, Any]] = {}
    if spec.estimator == "classifier":
        options = {id(estimator): {"zipmap": False}}  # a tensor, not a list of dicts
    model = convert_sklearn(
        estimator,
        name=spec.name,
        initial_types=[("features", FloatTensorType([None, width]))],
        options=options,
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": ML_OPSET},
    )
    model.producer_name = "safewatch"
    model.doc_string = spec.task
    blob: bytes = model.SerializeToString()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return blob
