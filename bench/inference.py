"""``safewatch bench inference``: the edge runner against a bare ``InferenceSession.run``.

For each shipped model, on this machine, in one process:

- **bare**: ``session.run`` on one prepared feature row (batch 1), the baseline;
- **runner overhead** at batch 1: one tick of the runner for one tag (gather the window,
  the card's output reduction around the same ``session.run``, publish the output sample and
  judge its pre-alarm rule) minus the bare run, timed in interleaved pairs; the feature
  extraction is replaced by the prepared row for this figure and reported on its own as
  ``features_us`` (it is the model's input, not dispatch); ``tick_batch1_us`` is the whole
  tick with features;
- **throughput** at batch 64: full ticks (gather + features + run + publish) for 64 tags with
  fresh windows; ``windows_per_s`` = 64 / median tick;
- **p99 latency** of that batch-64 tick.

The runner's dispatch path (what ``overhead_us`` measures) calls onnxruntime's compiled
``run`` directly with the input name cached (the Python ``InferenceSession.run`` wrapper
re-validates the input names on every call; the card check did that once at load), reduces
the outputs by index with numpy's ufunc methods, builds no per-call dicts besides the feed,
and hands a waveform model its block without copying it (copied once when it arrives).
``run_with_ort_values`` and IO binding were measured too: the ``OrtValue.numpy()`` or
``copy_outputs_to_cpu`` needed to read the answer cost more than they save at batch 1.

Keys: ``overhead_us`` (worst model), ``windows_per_s`` (worst), ``p99_ms`` (worst), and
``models`` with every figure per model. Medians of many repetitions; the shared 2-core
machine is noisy, so compare only figures from the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from device_drivers import Quality, Sample
from edge.config import (
    InferenceSettings,
    LoadedSite,
    ModelAssignment,
    SensorProfile,
    SiteConfig,
    load_profiles,
)
from edge.inference import InferenceRunner
from models import MODELS_DIR, ModelCard, compute_features, read_card

__all__ = ["run"]

KIND_PROFILE = {"ch4": "ch4", "roof_separation": "roof", "vibration": "vibration"}
_EXTRA = {
    "vibration": {"id": "vibration", "name": "accelerometer", "kind": "vibration",
                  "unit": "m/s2", "range": {"min": -500, "max": 500}, "nominal": 0,
                  "thresholds": {"default": {"alarm": 400}}},
    "roof": {"id": "roof", "name": "extensometer", "kind": "roof_separation", "unit": "mm",
             "range": {"min": 0, "max": 200}, "nominal": 2,
             "thresholds": {"default": {"alarm": 20}}},
}  # fmt: skip


def _site(model: str, kind: str, tags: int) -> LoadedSite:
    profile = KIND_PROFILE[kind]
    raw = {
        "site": {"id": "bench"},
        "gateway": {"id": "gw"},
        "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [
            {
                "id": "dev",
                "bus": "net",
                "tags": [
                    {"name": f"T{i}", "profile": profile, "address": 2 * i,
                     "location": {"area": "a", "position": "face"}}
                    for i in range(tags)
                ],
            }
        ],
    }  # fmt: skip
    config = SiteConfig.model_validate(raw).model_copy(
        update={
            "inference": InferenceSettings(
                max_batch=4096,
                assign=(ModelAssignment(model=model, tags=tuple(f"T{i}" for i in range(tags))),),
            )
        }
    )
    profiles = {
        **load_profiles(),
        **{k: SensorProfile.model_validate(v) for k, v in _EXTRA.items()},
    }
    return LoadedSite(source="bench", config=config, profiles=profiles)


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(min(200, repeat)):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000


class _Feeder:
    """Keeps every tag's window fresh without timing the offers."""

    def __init__(self, runner: InferenceRunner, window: np.ndarray, block: bool) -> None:
        self.runner = runner
        self.window = window
        self.block = block
        self.now = 0.0
        slot = next(iter(runner.slots.values()))
        self.slot = slot
        self.tags = slot.tags
        for tag in self.tags:
            if block:
                runner.offer_block(tag, window, self.now)
            else:
                period = slot.period_s or 1.0
                for v in window:
                    runner.offer(Sample(tag, "dev", float(v), Quality.GOOD, 0), self.now)
                    self.now += period

        self._all = dict.fromkeys(range(len(self.tags)))

    def refresh(self) -> None:
        self.slot.ready.update(self._all)  # as if each tag had a new sample since the last tick


def _one_model(card_path: Any, seconds: float, repeat: int | None) -> dict[str, float]:
    card = read_card(card_path)
    block = card.features.pipeline == "vibration"
    rng = np.random.default_rng(1)
    if block:
        window = rng.normal(0, 0.3, card.features.window)
    else:
        window = 0.3 + 0.01 * rng.standard_normal(card.features.window)

    # batch 1: one tag
    runner = InferenceRunner(_site(card.name, card.sensor_kind, 1))
    feeder = _Feeder(runner, window, block)
    model = runner.slots[card.name].model
    features = compute_features(card, window[None, :])
    names = model.output_names
    feeds = {model.input_name: features}
    session = model.session
    repeat = repeat or max(500, int(seconds * 2000))
    bare_us = _median_us(lambda: session.run(names, feeds), repeat)
    features_us = _median_us(lambda: compute_features(card, window[None, :]), repeat)

    def tick() -> None:
        feeder.refresh()
        runner.publish(runner.score(runner.gather()))

    tick_us = _median_us(tick, repeat)
    wrapped_us = _median_us(lambda: model.run(features), repeat)

    # overhead: the same tick with the feature extraction replaced by the prepared row,
    # timed in pairs with the bare run so both see the same machine load
    def prepared(_card: ModelCard, _windows: np.ndarray) -> np.ndarray:
        return features

    def tick_prepared() -> None:
        feeder.refresh()
        runner.publish(runner.score(runner.gather(), prepared))

    for _ in range(min(200, repeat)):
        tick_prepared()
    diffs: list[int] = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        session.run(names, feeds)
        t1 = time.perf_counter_ns()
        tick_prepared()
        t2 = time.perf_counter_ns()
        diffs.append((t2 - t1) - (t1 - t0))
    overhead_us = statistics.median(diffs) / 1000

    # batch 64: 64 tags with fresh windows each tick
    runner64 = InferenceRunner(_site(card.name, card.sensor_kind, 64))
    feeder64 = _Feeder(runner64, window, block)

    def tick64() -> None:
        feeder64.refresh()
        runner64.publish(runner64.score(runner64.gather()))

    for _ in range(min(20, max(1, repeat // 10))):
        tick64()
    samples: list[int] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < min(200, repeat):
        t0 = time.perf_counter_ns()
        tick64()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    median64 = statistics.median(samples) / 1e9
    p99 = samples[max(0, int(len(samples) * 0.99) - 1)] / 1e6
    return {
        "bare_run_us": round(bare_us, 2),
        "runner_run_us": round(wrapped_us, 2),
        "features_us": round(features_us, 2),
        "tick_batch1_us": round(tick_us, 2),
        "overhead_us": round(overhead_us, 2),
        "windows_per_s": round(64 / median64, 1),
        "p99_ms": round(p99, 3),
        "ticks": float(len(samples)),
    }


def run(seconds: float = 3.0, repeat: int | None = None) -> dict[str, Any]:
    """``repeat`` fixes the batch-1 repetitions (default: from ``seconds``)."""
    per_model = {
        read_card(path).name: _one_model(path, seconds, repeat)
        for path in sorted(MODELS_DIR.glob("*.card.yaml"))
    }
    return {
        "overhead_us": max(m["overhead_us"] for m in per_model.values()),
        "windows_per_s": min(m["windows_per_s"] for m in per_model.values()),
        "p99_ms": max(m["p99_ms"] for m in per_model.values()),
        "intra_op_threads": 1,
        "models": per_model,
    }
