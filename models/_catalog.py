"""The shipped models: what each one reads, learns, publishes and decides.

Dataset builders and evaluations take plain arrays (one per history), so the
same code serves synthetic scenarios and a site's own records; labels come
from the values themselves (a methane exceedance, a roof reaching red),
except wear stages, which need a ``label`` column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from models._card import Decision, FeatureSpec, OutputSpec
from models._metrics import auroc, confusion
from models.features import (
    PIPELINE_VERSION,
    trend_feature_names,
    trend_features,
    vibration_feature_names,
    vibration_features,
)

__all__ = [
    "CATALOG",
    "METHANE_FORECAST",
    "ROOF_TIME_TO_RED",
    "VIBRATION_WEAR",
    "Dataset",
    "ModelSpec",
    "Scorer",
]

Floats = NDArray[np.float64]
Scorer = Callable[[NDArray[np.float32]], dict[str, Floats]]
"""features -> the card's named outputs (a verified ONNX session in eval)."""


@dataclass(frozen=True)
class Dataset:
    features: NDArray[np.float32]
    target: Floats  # class (0/1, wear stage) or regression target


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    sensor_kind: str
    estimator: Literal["classifier", "regressor"]
    features: FeatureSpec
    outputs: tuple[OutputSpec, ...]
    decision_output: str
    direction: Literal["high", "low"]
    limitations: str


# -- methane exceedance forecast ----------------------------------------------------

METHANE_LIMIT = 1.0  # % CH4, working-face alarm (SAFETY_REFERENCE.md)
METHANE_PERIOD_S = 10.0
METHANE_WINDOW = 60  # 10 min of history
METHANE_HORIZON = 60  # 10 min ahead
METHANE_SPANS = (6, 18, 60)
METHANE_EXCLUSION = 180  # +-30 min around an exceedance is not a false-alarm opportunity

METHANE_FORECAST = ModelSpec(
    name="methane-forecast",
    task="probability that methane at a face sensor reaches >= 1.0 % within the next 10 minutes",
    sensor_kind="ch4",
    estimator="classifier",
    features=FeatureSpec(
        pipeline="trend",
        version=PIPELINE_VERSION,
        window=METHANE_WINDOW,
        period_s=METHANE_PERIOD_S,
        spans=METHANE_SPANS,
        rate_unit_s=60.0,
        names=tuple(trend_feature_names(METHANE_SPANS)),
    ),
    outputs=(
        OutputSpec(
            name="p_exceed_10m",
            source="probabilities",
            reduce="column_sum",
            columns=(1,),
            unit="1",
            meaning="P(CH4 >= 1.0 % within 10 min)",
        ),
    ),
    decision_output="p_exceed_10m",
    direction="high",
    limitations=(
        "Trained on synthetic longwall scenarios (C = E/Q with mining cycles, ventilation "
        "steps, 15-45 min build-ups). A fan trip or outburst reaches the limit in seconds "
        "to minutes: no warning is possible, the threshold rules and lockouts own those. "
        "Windows already at >= 1.0 % are not scored for training. Retrain on the site's "
        "own records before relying on the probabilities."
    ),
)


def _auroc(labels: NDArray[np.generic], scores: Floats) -> dict[str, float]:
    """``{"auroc": ...}``, or nothing when the set has only one class (tiny sets)."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return {}
    return {"auroc": auroc(y, scores)}


def _trend(spec: FeatureSpec, windows: Floats) -> NDArray[np.float32]:
    assert spec.period_s is not None
    return trend_features(
        windows, period_s=spec.period_s, spans=spec.spans, rate_unit_s=spec.rate_unit_s
    )


def _windows(values: Floats, ends: NDArray[np.intp], window: int) -> Floats:
    view = np.lib.stride_tricks.sliding_window_view(values, window)
    return np.asarray(view[ends - (window - 1)])


def _future_max(values: Floats, horizon: int) -> Floats:
    """max(values[i+1 : i+1+horizon]) for every i (-inf past the end)."""
    padded = np.concatenate([values[1:], np.full(horizon, -np.inf)])
    return np.asarray(np.lib.stride_tricks.sliding_window_view(padded, horizon).max(axis=1))


def methane_dataset(series: Sequence[Floats], *, stride: int = 2) -> Dataset:
    """Windows ending below the limit, labelled by an exceedance within the horizon."""
    feats: list[NDArray[np.float32]] = []
    target: list[Floats] = []
    for values in series:
        n = len(values)
        if n < METHANE_WINDOW + METHANE_HORIZON:
            continue
        ends = np.arange(METHANE_WINDOW - 1, n - METHANE_HORIZON, stride)
        ends = ends[values[ends] < METHANE_LIMIT]
        if len(ends) == 0:
            continue
        future = _future_max(values, METHANE_HORIZON)[ends]
        feats.append(_trend(METHANE_FORECAST.features, _windows(values, ends, METHANE_WINDOW)))
        target.append((future >= METHANE_LIMIT).astype(np.float64))
    return Dataset(np.concatenate(feats), np.concatenate(target))


def methane_evaluate(
    scorer: Scorer, series: Sequence[Floats], threshold: float, *, min_lead_s: float = 300.0
) -> dict[str, float]:
    """Stream every window of every held-out history through the model.

    A **build-up** is a history that reaches the limit; its warning is the first
    window in the 30 min before the first exceedance whose probability is at or
    over ``threshold``; the lead is the time from there to the exceedance. A
    **false alarm** is a window at or over the threshold with no exceedance
    within +-30 min.
    """
    labels: list[Floats] = []
    scores: list[Floats] = []
    negatives: list[NDArray[np.bool_]] = []
    leads: list[float] = []
    quiet_alarmed = 0
    quiet = 0
    for values in series:
        n = len(values)
        ends = np.arange(METHANE_WINDOW - 1, n)
        p = scorer(_trend(METHANE_FORECAST.features, _windows(values, ends, METHANE_WINDOW)))[
            "p_exceed_10m"
        ]
        over = values >= METHANE_LIMIT
        future = _future_max(values, METHANE_HORIZON)[ends] >= METHANE_LIMIT
        near = np.convolve(over, np.ones(2 * METHANE_EXCLUSION + 1), mode="same")[ends] > 0
        below = ~over[ends]
        labels.append(future[below].astype(np.float64))
        scores.append(p[below])
        negatives.append(~near[below])
        if over.any():
            first = int(np.argmax(over))
            lo = max(METHANE_WINDOW - 1, first - METHANE_EXCLUSION)
            if first <= METHANE_WINDOW - 1:
                continue  # exceeds before the model has a window: not a forecastable build-up
            alarmed = np.flatnonzero(
                p[lo - (METHANE_WINDOW - 1) : first - (METHANE_WINDOW - 1)] >= threshold
            )
            leads.append(
                float((first - (lo + alarmed[0])) * METHANE_PERIOD_S) if len(alarmed) else 0.0
            )
        else:
            quiet += 1
            quiet_alarmed += int(bool((p >= threshold).any()))
    y = np.concatenate(labels)
    s = np.concatenate(scores)
    neg = np.concatenate(negatives)
    rates = confusion(y, s >= threshold)
    lead = np.asarray(leads)
    return {
        **_auroc(y, s),
        "precision": rates["precision"],
        "recall": rates["recall"],
        "false_alarm_rate": float(np.mean(s[neg] >= threshold)),
        "buildups": float(len(lead)),
        "warned_5min_share": float(np.mean(lead >= min_lead_s)) if len(lead) else 0.0,
        "lead_time_median_s": float(np.median(lead)) if len(lead) else 0.0,
        "lead_time_min_s": float(lead.min()) if len(lead) else 0.0,
        "quiet_histories": float(quiet),
        "quiet_histories_alarmed_share": quiet_alarmed / quiet if quiet else 0.0,
        "threshold": threshold,
    }


# -- roof separation: time to red ----------------------------------------------------

ROOF_RED_MM = 20.0
ROOF_PERIOD_S = 3600.0
ROOF_WINDOW = 168  # 7 days hourly
ROOF_SPANS = (6, 24, 72, 168)
ROOF_HORIZON_H = 336  # 14 days: "warnings 3-15 days ahead"

ROOF_TIME_TO_RED = ModelSpec(
    name="roof-time-to-red",
    task="hours until roof separation reaches the 20 mm red limit (capped at 336 h = 14 days)",
    sensor_kind="roof_separation",
    estimator="regressor",
    features=FeatureSpec(
        pipeline="trend",
        version=PIPELINE_VERSION,
        window=ROOF_WINDOW,
        period_s=ROOF_PERIOD_S,
        spans=ROOF_SPANS,
        rate_unit_s=86400.0,
        names=tuple(trend_feature_names(ROOF_SPANS)),
    ),
    outputs=(
        OutputSpec(
            name="hours_to_red",
            source="variable",
            reduce="value",
            transform="expm1",
            unit="h",
            meaning="predicted hours until separation >= 20 mm (336 = not within 14 days)",
        ),
    ),
    decision_output="hours_to_red",
    direction="low",
    limitations=(
        "Trained on synthetic extensometer histories (primary/secondary creep, face passing, "
        "inverse-velocity tertiary creep before failure) with the illustrative 20 mm red "
        "limit of SAFETY_REFERENCE.md; a site with another limit must retrain. Needs 7 days "
        "of hourly readings before its first output (the gateway keeps them in memory: a "
        "restart starts the window again)."
    ),
)


def _hours_to_red(values: Floats) -> Floats:
    """Hours from each sample to the next reading >= red (inf when none follows)."""
    n = len(values)
    out = np.full(n, np.inf)
    nxt = np.inf
    for i in range(n - 1, -1, -1):
        if values[i] >= ROOF_RED_MM:
            nxt = float(i)
        out[i] = nxt - i
    return out * (3600.0 / ROOF_PERIOD_S)


def _roof_targets(values: Floats) -> tuple[NDArray[np.intp], Floats]:
    """Window ends with a known target (capped at the horizon, censored ones left out)."""
    n = len(values)
    ends = np.arange(ROOF_WINDOW - 1, n)
    hours = _hours_to_red(values)[ends]
    below = values[ends] < ROOF_RED_MM
    known = np.isfinite(hours) | (ends + ROOF_HORIZON_H < n)
    keep = below & known
    return ends[keep], np.minimum(hours[keep], ROOF_HORIZON_H)


def roof_dataset(series: Sequence[Floats], *, stride: int = 3) -> Dataset:
    feats: list[NDArray[np.float32]] = []
    target: list[Floats] = []
    for values in series:
        if len(values) < ROOF_WINDOW + 1:
            continue
        ends, hours = _roof_targets(values)
        ends, hours = ends[::stride], hours[::stride]
        if len(ends) == 0:
            continue
        feats.append(_trend(ROOF_TIME_TO_RED.features, _windows(values, ends, ROOF_WINDOW)))
        target.append(np.log1p(hours))
    return Dataset(np.concatenate(feats), np.concatenate(target))


def roof_evaluate(scorer: Scorer, series: Sequence[Floats], threshold_h: float) -> dict[str, float]:
    """A **failure** is a history that reaches red; its warning is the first window
    predicting <= ``threshold_h``; lead = hours from there to red. Window-level
    classification: positive when red is truly within ``threshold_h``."""
    truth: list[Floats] = []
    pred: list[Floats] = []
    leads: list[float] = []
    quiet = quiet_alarmed = 0
    for values in series:
        ends, hours = _roof_targets(values)
        if len(ends) == 0:
            continue
        p = scorer(_trend(ROOF_TIME_TO_RED.features, _windows(values, ends, ROOF_WINDOW)))[
            "hours_to_red"
        ]
        truth.append(hours)
        pred.append(p)
        if np.isfinite(_hours_to_red(values)[ends[0]]):
            warned = np.flatnonzero(p <= threshold_h)
            leads.append(float(hours[warned[0]]) if len(warned) else 0.0)
        else:
            quiet += 1
            quiet_alarmed += int(bool((p <= threshold_h).any()))
    y_h = np.concatenate(truth)
    p_h = np.concatenate(pred)
    positive = y_h <= threshold_h
    rates = confusion(positive, p_h <= threshold_h)
    soon = y_h < ROOF_HORIZON_H
    lead = np.asarray(leads)
    return {
        **_auroc(positive, -p_h),
        "precision": rates["precision"],
        "recall": rates["recall"],
        "false_alarm_rate": float(np.mean(p_h[y_h >= 2 * threshold_h] <= threshold_h)),
        "mae_h_within_horizon": float(np.mean(np.abs(p_h[soon] - y_h[soon]))),
        "failures": float(len(lead)),
        "warned_24h_share": float(np.mean(lead >= 24.0)) if len(lead) else 0.0,
        "lead_time_median_h": float(np.median(lead)) if len(lead) else 0.0,
        "lead_time_min_h": float(lead.min()) if len(lead) else 0.0,
        "quiet_histories": float(quiet),
        "quiet_histories_alarmed_share": quiet_alarmed / quiet if quiet else 0.0,
        "threshold": threshold_h,
    }


# -- bearing vibration: anomaly and wear stage ----------------------------------------

VIBRATION_RATE_HZ = 5120.0
VIBRATION_BLOCK = 2048

VIBRATION_WEAR = ModelSpec(
    name="vibration-wear",
    task="bearing wear stage (0 healthy .. 3 severe) and anomaly score from one waveform block",
    sensor_kind="vibration",
    estimator="classifier",
    features=FeatureSpec(
        pipeline="vibration",
        version=PIPELINE_VERSION,
        window=VIBRATION_BLOCK,
        sample_rate_hz=VIBRATION_RATE_HZ,
        names=tuple(vibration_feature_names()),
    ),
    outputs=(
        OutputSpec(
            name="anomaly",
            source="probabilities",
            reduce="column_sum",
            columns=(1, 2, 3),
            unit="1",
            meaning="P(bearing worn: stage >= 1)",
        ),
        OutputSpec(
            name="wear_stage",
            source="probabilities",
            reduce="argmax",
            unit="",
            meaning="most likely stage: 0 healthy, 1 early, 2 developed (zone C), "
            "3 severe (zone D)",
        ),
    ),
    decision_output="anomaly",
    direction="high",
    limitations=(
        "Trained on synthetic outer-race defects of medium machines (ISO 10816-3 group 2, "
        "rigid, 1450-1490 rpm) sampled at 5120 Hz in blocks of 2048. Other speeds, "
        "mountings, gearboxes or inner-race/cage faults are outside its training; the "
        "ISO 10816 zone limits in the rules stay the authority."
    ),
)


def vibration_dataset(blocks: Floats, stages: NDArray[np.integer]) -> Dataset:
    return Dataset(
        vibration_features(blocks, sample_rate_hz=VIBRATION_RATE_HZ),
        np.asarray(stages, dtype=np.float64),
    )


def vibration_evaluate(
    scorer: Scorer, blocks: Floats, stages: NDArray[np.integer], threshold: float
) -> dict[str, float]:
    out = scorer(vibration_features(blocks, sample_rate_hz=VIBRATION_RATE_HZ))
    worn = np.asarray(stages) >= 1
    rates = confusion(worn, out["anomaly"] >= threshold)
    return {
        **_auroc(worn, out["anomaly"]),
        "precision": rates["precision"],
        "recall": rates["recall"],
        "false_alarm_rate": rates["false_alarm_rate"],
        "stage_accuracy": float(np.mean(out["wear_stage"] == np.asarray(stages))),
        "blocks": float(len(stages)),
        "threshold": threshold,
    }


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec for spec in (VIBRATION_WEAR, METHANE_FORECAST, ROOF_TIME_TO_RED)
}


def decision_for(spec: ModelSpec, threshold: float, clear: float, meaning: str) -> Decision:
    return Decision(
        output=spec.decision_output,
        direction=spec.direction,
        threshold=threshold,
        clear=clear,
        meaning=meaning,
    )
