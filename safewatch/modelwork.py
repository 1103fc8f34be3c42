"""Glue for ``safewatch models train|eval``: histories (synthetic or a site's) -> models.

``models`` may not import ``simulators`` (the gateway imports ``models``), so
the CLI layer joins them: it draws seeded histories from
:mod:`simulators.synthetic` (or loads a site's), hands arrays to the catalog's
dataset builders, fits, exports ONNX, writes the card, then scores held-out
histories through the exported file itself (:func:`models.load_model`).

Seeds: training history ``i`` of a run with ``--seed S`` uses seed
``S * 1_000_000 + i``; held-out evaluation histories use seeds from
``HELD_OUT_BASE`` on, which no training run with a seed below 1000 reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import (
    CATALOG,
    METHANE_FORECAST,
    ROOF_TIME_TO_RED,
    VIBRATION_WEAR,
    LoadedModel,
    ModelCard,
    TensorSpec,
    TrainingInfo,
    file_sha256,
    load_model,
    write_card,
)
from models._catalog import (
    Dataset,
    decision_for,
    methane_dataset,
    methane_evaluate,
    roof_dataset,
    roof_evaluate,
    vibration_dataset,
    vibration_evaluate,
)
from models._train import ONNX_OPSET, default_params, export_onnx, fit
from simulators.synthetic import (
    History,
    data_sha256,
    methane,
    roof_separation,
    vibration_blocks,
)

__all__ = [
    "HELD_OUT_BASE",
    "QUICK_HELD_OUT",
    "THRESHOLDS",
    "HeldOut",
    "TrainSize",
    "evaluate",
    "evaluate_model",
    "held_out",
    "train",
]

HELD_OUT_BASE = 1_000_000_000

# decision thresholds (and their hysteresis "clear" values) chosen on validation runs
THRESHOLDS: dict[str, tuple[float, float, str]] = {
    METHANE_FORECAST.name: (
        0.3,
        0.2,
        "pre-alarm while P(>= 1.0 % within 10 min) >= 0.3; ends below 0.2",
    ),
    ROOF_TIME_TO_RED.name: (
        96.0,
        120.0,
        "pre-alarm while red (20 mm) is predicted within 96 h; ends above 120 h",
    ),
    VIBRATION_WEAR.name: (
        0.5,
        0.4,
        "pre-alarm while P(worn) >= 0.5; ends below 0.4 (ISO 10816 zone rules stay in force)",
    ),
}


@dataclass(frozen=True)
class TrainSize:
    """How much synthetic data one training run draws (defaults: the shipped models)."""

    methane_histories: int = 240
    roof_histories: int = 120
    vibration_blocks: int = 2000
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Data:
    train: Dataset
    validation: list[History]
    histories: list[History]
    description: str


def _split(histories: list[History]) -> tuple[list[History], list[History]]:
    cut = max(1, int(len(histories) * 0.8))
    return histories[:cut], histories[cut:]


def synthetic_histories(name: str, seed: int, size: TrainSize) -> tuple[list[History], str]:
    base = seed * 1_000_000
    if name == METHANE_FORECAST.name:
        n = size.methane_histories
        return (
            [methane(base + i) for i in range(n)],
            f"simulators.synthetic.methane: {n} x 3 h at 10 s, seeds {base}..{base + n - 1}",
        )
    if name == ROOF_TIME_TO_RED.name:
        n = size.roof_histories
        return (
            [roof_separation(base + i) for i in range(n)],
            f"simulators.synthetic.roof_separation: {n} x 40 days hourly, "
            f"seeds {base}..{base + n - 1}",
        )
    n = size.vibration_blocks
    stages = np.random.default_rng(base).integers(0, 4, n).tolist()
    return (
        [vibration_blocks(base, stages, machines=max(4, n // 30))],
        f"simulators.synthetic.vibration_blocks: {n} blocks of 2048 at 5120 Hz, "
        f"{max(4, n // 30)} machines, seed {base}",
    )


def _dataset(name: str, histories: Sequence[History]) -> Dataset:
    if name == METHANE_FORECAST.name:
        return methane_dataset([h.values for h in histories], stride=3)
    if name == ROOF_TIME_TO_RED.name:
        return roof_dataset([h.values for h in histories], stride=3)
    blocks = np.concatenate([h.values for h in histories])
    labels = np.concatenate([_labels(h) for h in histories])
    return vibration_dataset(blocks, labels)


def _labels(h: History) -> NDArray[np.int64]:
    if h.labels is None:
        raise ValueError(f"{h.tag}: training the wear model needs a 'label' (stage) column")
    return h.labels


def resample(history: History, period_s: float) -> History:
    """A site's history on the model's even grid (linear interpolation; gaps bridged)."""
    if history.values.ndim != 1:
        return history
    t = np.arange(history.t_s[0], history.t_s[-1] + period_s / 2, period_s)
    return History(
        tag=history.tag,
        kind=history.kind,
        unit=history.unit,
        t_s=t,
        values=np.interp(t, history.t_s, history.values),
    )


def _evaluate_on(name: str, scorer: Any, histories: Sequence[History]) -> dict[str, float]:
    threshold = THRESHOLDS[name][0]
    if name == METHANE_FORECAST.name:
        return methane_evaluate(scorer, [h.values for h in histories], threshold)
    if name == ROOF_TIME_TO_RED.name:
        return roof_evaluate(scorer, [h.values for h in histories], threshold)
    blocks = np.concatenate([h.values for h in histories])
    labels = np.concatenate([_labels(h) for h in histories])
    return vibration_evaluate(scorer, blocks, labels, threshold)


def train(
    name: str,
    out_dir: Path,
    *,
    seed: int = 1,
    size: TrainSize | None = None,
    histories: list[History] | None = None,
    source: str = "",
    heldout: HeldOut | None = None,
) -> ModelCard:
    """Train ``name``, write ``<name>.onnx`` and ``<name>.card.yaml`` into ``out_dir``.

    ``histories`` (a site's own records) replace the synthetic data; they are
    resampled to the model's period first.
    """
    spec = CATALOG[name]
    size = size or TrainSize()
    if histories is None:
        histories, source = synthetic_histories(name, seed, size)
    elif spec.features.period_s is not None:
        histories = [resample(h, spec.features.period_s) for h in histories]
    if name == VIBRATION_WEAR.name:
        # one history of many blocks: validate on the last 20 % of its blocks
        blocks = np.concatenate([h.values for h in histories])
        labels = np.concatenate([_labels(h) for h in histories])
        cut = int(len(labels) * 0.8)
        fit_on = [_blocks_history(histories[0], blocks[:cut], labels[:cut])]
        validation = [_blocks_history(histories[0], blocks[cut:], labels[cut:])]
    else:
        fit_on, validation = _split(histories)
    data = _dataset(name, fit_on)
    params = {**default_params(spec), **size.params.get(name, {})}
    estimator = fit(spec, data, seed, params)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    export_onnx(spec, estimator, onnx_path)
    threshold, clear, meaning = THRESHOLDS[name]
    card = ModelCard(
        name=name,
        version=1,
        task=spec.task,
        sensor_kind=spec.sensor_kind,
        file=onnx_path.name,
        sha256=file_sha256(onnx_path),
        opset=ONNX_OPSET,
        inputs=(TensorSpec(name="features", shape=(None, len(spec.features.names))),),
        features=spec.features,
        outputs=spec.outputs,
        decision=decision_for(spec, threshold, clear, meaning),
        training=TrainingInfo(
            data=source,
            seed=seed,
            histories=len(histories),
            windows=len(data.target),
            data_sha256=data_sha256(histories),
            estimator=type(estimator).__name__,
            params=params,
        ),
        metrics={},
        limitations=spec.limitations,
    )
    card_path = out_dir / f"{name}.card.yaml"
    write_card(card, card_path)
    # validation metrics come from the exported ONNX file, loaded as the gateway loads it
    loaded = load_model(card_path)
    metrics = {f"validation_{k}": v for k, v in _evaluate_on(name, loaded.run, validation).items()}
    metrics |= {f"heldout_{k}": v for k, v in evaluate_model(loaded, heldout or HeldOut()).items()}
    card = card.model_copy(update={"metrics": _rounded(metrics)})
    write_card(card, card_path)
    return card


def _blocks_history(
    like: History, blocks: NDArray[np.float64], labels: NDArray[np.int64]
) -> History:
    return History(
        tag=like.tag,
        kind=like.kind,
        unit=like.unit,
        t_s=np.arange(len(labels), dtype=np.float64),
        values=blocks,
        labels=labels,
        sample_rate_hz=like.sample_rate_hz,
    )


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}


@dataclass(frozen=True)
class HeldOut:
    """Held-out evaluation sizes (tests use small ones; the CLI's default is larger)."""

    methane_histories: int = 120
    roof_histories: int = 60
    vibration_blocks: int = 1200


def held_out(name: str, size: HeldOut) -> list[History]:
    """Seeded held-out histories that no training run draws (seeds from HELD_OUT_BASE)."""
    if name == METHANE_FORECAST.name:
        return [methane(HELD_OUT_BASE + i) for i in range(size.methane_histories)]
    if name == ROOF_TIME_TO_RED.name:
        return [roof_separation(HELD_OUT_BASE + i) for i in range(size.roof_histories)]
    stages = np.random.default_rng(HELD_OUT_BASE).integers(0, 4, size.vibration_blocks).tolist()
    return [vibration_blocks(HELD_OUT_BASE, stages, machines=max(4, size.vibration_blocks // 30))]


def evaluate_model(model: LoadedModel, size: HeldOut) -> dict[str, float]:
    """Score held-out histories through a loaded (verified) ONNX model."""
    name = model.card.name
    if name not in CATALOG:
        raise ValueError(f"{model.path}: no held-out scenarios for model {name!r}")
    result = _evaluate_on(name, model.run, held_out(name, size))
    return _rounded(result)


def evaluate(models_dir: Path, size: HeldOut | None = None) -> dict[str, dict[str, float]]:
    """Evaluate every card in ``models_dir`` that belongs to the catalog."""
    size = size or HeldOut()
    results: dict[str, dict[str, float]] = {}
    for card_path in sorted(models_dir.glob("*.card.yaml")):
        model = load_model(card_path)
        if model.card.name in CATALOG:
            results[model.card.name] = evaluate_model(model, size)
    return results


QUICK_HELD_OUT = HeldOut(methane_histories=40, roof_histories=24, vibration_blocks=400)
"""The held-out sets the tests score (seconds); ``safewatch models eval --quick``."""
