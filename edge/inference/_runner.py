"""The gateway's inference runner: ring buffers -> features -> one ONNX session per model.

Where it sits (off the safety path)::

    poll task:  engine.handle(sample)  ->  runner.offer(sample)      O(1): one array write
    inference task, every tick:
        gather()   (event loop)   copy the fresh, full windows, at most max_batch per model
        score()    (worker thread) features + session.run for the whole batch
        publish()  (event loop)   outputs -> forecast samples (telemetry) -> pre-alarm rules

``offer`` runs after the safety decision on the sample has been taken, never
blocks and never raises into the poller. A model can only raise an advisory
pre-alarm (:class:`~edge.inference.ForecastRule`), never a cut.

Hot swap: :meth:`InferenceRunner.check_for_updates` notices a changed card or
ONNX file (after it has stopped changing for one check), verifies the new pair
off the event loop and replaces the model with one assignment; a refused pair
keeps the running model. Deploy a new model by writing the ``.onnx`` and then
the card, each with an atomic rename (``safewatch models install``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import wire
from device_drivers import Quality, Sample
from edge.config import InferenceSettings, LoadedSite
from edge.engine import SafetyEngine
from edge.inference._rules import ForecastRule
from edge.rules import Transition
from models import (
    MODELS_DIR,
    FeatureError,
    LoadedModel,
    ModelCard,
    ModelRefused,
    compute_features,
    load_model,
)

__all__ = ["Batch", "InferenceError", "InferenceRunner", "OutputTag"]

log = logging.getLogger("safewatch.edge.inference")

STALE_PERIODS = 3.0  # a trend window with a gap longer than this many periods starts again
JITTER = 0.1  # a sample up to 10 % of a period early still counts for that period


class InferenceError(Exception):
    """The inference section of a site cannot run (unknown model, wrong sensor kind)."""


@dataclass(frozen=True)
class OutputTag:
    """A published model output: ``<source tag>.<output>``, kind ``forecast``."""

    tag: str
    source: str
    device: str
    model: str
    output: str
    unit: str
    area: str
    position: str


@dataclass(slots=True)
class Batch:
    """Windows gathered for one model in one tick."""

    slot: _ModelSlot
    model: LoadedModel
    rows: list[int]
    windows: NDArray[np.float64]
    outputs: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    error: str = ""


class _ModelSlot:
    """One model, its sensors' ring buffers and their pre-alarm rules."""

    def __init__(self, model: LoadedModel, sources: Sequence[tuple[str, str]], started: float):
        self.model = model
        self.name = model.card.name
        self.tags = [tag for tag, _ in sources]
        self.devices = [device for _, device in sources]
        self.row_of = {tag: i for i, tag in enumerate(self.tags)}
        self._allocate(model.card, started)
        # per output: the published tag of each row and the pre-alarm rule judging it
        self.published: dict[str, tuple[list[str], list[ForecastRule | None]]] = {
            out.name: ([f"{tag}.{out.name}" for tag in self.tags], [None] * len(self.tags))
            for out in model.card.outputs
        }
        self.scored = 0
        self.dropped_rows = 0  # fresh windows left for a later tick (max_batch)

    def _allocate(self, card: ModelCard, started: float) -> None:
        n, window = len(self.tags), card.features.window
        self.window = window
        self.period_s = card.features.period_s  # None: every sample is kept (waveform)
        # every value is written twice (at p and p + window), so the last ``window`` values
        # are always one contiguous slice: buf[row, pos : pos + window]
        self.buf = np.zeros((n, 2 * window), dtype=np.float64)
        self._views = np.lib.stride_tricks.sliding_window_view(self.buf, window, axis=1)
        self.pos = [0] * n  # where the oldest value of the window starts
        self.count = [0] * n
        self.next_due = [-math.inf] * n
        self.last_append = [started] * n
        self.ready: dict[int, None] = {}  # rows with a new full window since the last gather
        # waveform models: each row's last block, copied once when it arrives and never
        # written again (a new block replaces the array), so gather hands it out uncopied
        self.blocks: list[NDArray[np.float64]] = [self.buf[0, :window]] * n

    def offer(self, row: int, value: float, now: float) -> None:
        period = self.period_s
        if period is not None:
            due = self.next_due[row]
            if now < due - JITTER * period:
                return  # faster than the model's period: keep one sample per period
            if now - self.last_append[row] > STALE_PERIODS * period:
                self.count[row] = 0  # a gap: the window starts again
            # on the grid while polls keep up (no drift); re-anchored after a late sample
            self.next_due[row] = due + period if now - due < period else now + period
        p = self.pos[row]
        buf = self.buf[row]
        buf[p] = value
        buf[p + self.window] = value
        self.pos[row] = p + 1 if p + 1 < self.window else 0
        count = self.count[row] + 1
        self.last_append[row] = now
        if count >= self.window:
            self.count[row] = self.window
            self.ready[row] = None
        else:
            self.count[row] = count

    def offer_block(self, row: int, block: NDArray[np.floating], now: float) -> None:
        if block.shape != (self.window,):
            raise ValueError(
                f"{self.name}: block of {block.shape} for tag {self.tags[row]!r}; "
                f"the card wants ({self.window},)"
            )
        self.blocks[row] = np.array(block, dtype=np.float64)  # our own copy
        self.pos[row] = 0
        self.count[row] = self.window
        self.last_append[row] = now
        self.ready[row] = None

    def gather(self, max_batch: int) -> tuple[list[int], NDArray[np.float64]]:
        ready = self.ready
        if len(ready) <= max_batch:
            rows = list(ready)
            ready.clear()
        else:
            rows = list(ready)[:max_batch]
            self.dropped_rows += len(ready) - max_batch  # they stay ready for the next tick
            for row in rows:
                del ready[row]
        if not rows:
            return rows, np.empty((0, self.window))
        if self.period_s is None:  # waveform blocks: no ring buffer, no copy at batch 1
            if len(rows) == 1:
                return rows, self.blocks[rows[0]][None, :]
            return rows, np.stack([self.blocks[r] for r in rows])
        if len(rows) == 1:
            row = rows[0]
            p = self.pos[row]
            return rows, self.buf[row : row + 1, p : p + self.window].copy()
        pos = self.pos
        return rows, self._views[rows, [pos[r] for r in rows]]


Sink = Callable[[Sample], object]
FeatureFn = Callable[[ModelCard, NDArray[np.float64]], NDArray[np.float32]]


class InferenceRunner:
    """Every model of a site's ``inference`` section, one session each."""

    def __init__(
        self,
        site: LoadedSite,
        settings: InferenceSettings | None = None,
        *,
        models_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.site = site
        self.settings = settings or site.config.inference
        folder = models_dir or self.settings.models_dir
        self.models_dir = Path(folder) if folder else MODELS_DIR
        self._clock = clock
        started = clock()
        tags = {tag.name: (device, tag) for device, tag in site.tags()}
        grouped: dict[str, list[str]] = {}
        for assignment in self.settings.assign:
            grouped.setdefault(assignment.model, []).extend(assignment.tags)
        self.slots: dict[str, _ModelSlot] = {}
        self.rules: dict[str, ForecastRule] = {}
        self.outputs: dict[str, OutputTag] = {}
        self._routes: dict[str, list[tuple[_ModelSlot, int]]] = {}  # trend models: samples
        self._block_routes: dict[str, list[tuple[_ModelSlot, int]]] = {}  # waveform: blocks
        self._stamps: dict[str, tuple[float, float]] = {}
        self._pending: dict[str, tuple[float, float]] = {}
        for name, tag_names in grouped.items():
            model = self._load(name)
            for tag_name in tag_names:
                if tag_name not in tags:
                    raise InferenceError(f"{site.source}: inference: unknown tag {tag_name!r}")
                kind = site.profile_of(tags[tag_name][1]).kind
                if kind != model.card.sensor_kind:
                    raise InferenceError(
                        f"{site.source}: inference: model {name!r} reads "
                        f"{model.card.sensor_kind!r} sensors; tag {tag_name!r} is {kind!r}"
                    )
            sources = [(t, tags[t][0].id) for t in dict.fromkeys(tag_names)]
            slot = _ModelSlot(model, sources, started)
            self.slots[name] = slot
            self._stamps[name] = self._stamp(name)
            # a waveform model reads whole blocks, never the tag's scalar readings
            routes = self._routes if slot.period_s is not None else self._block_routes
            for row, (tag_name, device_id) in enumerate(sources):
                routes.setdefault(tag_name, []).append((slot, row))
                self._add_outputs(slot, tag_name, device_id, tags[tag_name][1].location, started)
        self._engine_owned = False
        self.samples_offered = 0
        self.windows_scored = 0
        self.score_errors = 0
        self.swaps = 0
        self.swaps_refused = 0
        self.sink_dropped = 0

    # -- setup -------------------------------------------------------------------------

    def _card_path(self, name: str) -> Path:
        return self.models_dir / f"{name}.card.yaml"

    def _load(self, name: str) -> LoadedModel:
        path = self._card_path(name)
        if not path.exists():
            known = sorted(
                p.name.removesuffix(".card.yaml") for p in self.models_dir.glob("*.card.yaml")
            )
            raise InferenceError(
                f"{self.site.source}: inference: no model {name!r} in {self.models_dir} "
                f"(known: {', '.join(known) or 'none'})"
            )
        try:
            return load_model(path, intra_op_threads=self.settings.intra_op_threads)
        except ModelRefused as exc:
            raise InferenceError(f"{self.site.source}: inference: {exc}") from exc

    def _add_outputs(
        self, slot: _ModelSlot, tag: str, device: str, location: object, started: float
    ) -> None:
        card = slot.model.card
        area = getattr(location, "area", "")
        position = getattr(location, "position", "")
        for out in card.outputs:
            name = f"{tag}.{out.name}"
            if len(name) > 64:  # the wire's id limit
                raise InferenceError(
                    f"{self.site.source}: inference: output tag {name!r} is longer than 64 "
                    f"characters; shorten tag {tag!r}"
                )
            self.outputs[name] = OutputTag(
                name, tag, device, card.name, out.name, out.unit, area, position
            )
        decided = f"{tag}.{card.decision.output}"
        period = card.features.period_s
        # waveform blocks come when the sensor sends them (minutes to hours): no staleness
        stale = (
            math.inf
            if period is None
            else max(STALE_PERIODS * period, 3 * self.settings.tick_ms / 1000)
        )
        rule = ForecastRule(
            card.name, tag, decided, card.decision, stale_after_s=stale, started_at=started
        )
        self.rules[rule.id] = rule
        slot.published[card.decision.output][1][slot.row_of[tag]] = rule

    def attach(self, engine: SafetyEngine) -> None:
        """Hand the pre-alarm rules to the safety engine, which then owns their conditions:
        publish the outputs with ``sink=engine.handle`` (it routes them to the rules and
        queues them for the uplink); the runner stops judging them itself."""
        for rule in self.rules.values():
            engine.add_rule(rule)
        self._engine_owned = True

    # -- the poll path -----------------------------------------------------------------

    def offer(self, sample: Sample, now: float | None = None) -> None:
        """Keep one sample for the models that read its tag (O(1); never raises)."""
        routes = self._routes.get(sample.tag)
        if routes is None:
            return
        value = sample.value
        if sample.quality is Quality.BAD or value is None or not math.isfinite(value):
            return  # a gap; a long one restarts the window
        now = self._clock() if now is None else now
        self.samples_offered += 1
        for slot, row in routes:
            slot.offer(row, value, now)

    def offer_block(self, tag: str, block: NDArray[np.floating], now: float | None = None) -> None:
        """A whole waveform block (vibration) for ``tag``."""
        now = self._clock() if now is None else now
        arr = np.asarray(block, dtype=np.float64)
        for slot, row in self._block_routes.get(tag, ()):
            slot.offer_block(row, arr, now)

    def block_window(self, tag: str) -> int | None:
        """Samples per block the waveform model on ``tag`` wants (None: no such model)."""
        routes = self._block_routes.get(tag)
        return routes[0][0].window if routes else None

    # -- the inference task ------------------------------------------------------------

    def gather(self) -> list[Batch]:
        """Copy every fresh full window (event loop; bounded by max_batch per model)."""
        batches: list[Batch] = []
        for slot in self.slots.values():
            rows, windows = slot.gather(self.settings.max_batch)
            if rows:
                batches.append(Batch(slot, slot.model, rows, windows))
        return batches

    @staticmethod
    def score(batches: list[Batch], features_of: FeatureFn = compute_features) -> list[Batch]:
        """Features and one ``session.run`` per model (worker thread: no shared state)."""
        for batch in batches:
            try:
                features = features_of(batch.model.card, batch.windows)
                batch.outputs = batch.model.run(features)
            except (FeatureError, ValueError, RuntimeError) as exc:
                batch.error = f"{batch.model.card.name}: {exc}"
        return batches

    def publish(
        self, batches: list[Batch], sink: Sink | None = None, now: float | None = None
    ) -> tuple[list[Sample], list[tuple[ForecastRule, Transition]]]:
        """Outputs -> forecast samples (to ``sink``) and pre-alarm transitions."""
        now = self._clock() if now is None else now
        ts_ns = time.time_ns()
        samples: list[Sample] = []
        changes: list[tuple[ForecastRule, Transition]] = []
        good = Quality.GOOD
        judge = not self._engine_owned  # once attached, the engine judges (through sink)
        for batch in batches:
            slot = batch.slot
            if batch.error:
                self.score_errors += 1
                log.error("inference: %s", batch.error)
                continue
            rows = batch.rows
            slot.scored += len(rows)
            self.windows_scored += len(rows)
            devices = slot.devices
            for name, values in batch.outputs.items():
                tags, rules = slot.published[name]
                for row, value in zip(rows, values.tolist(), strict=True):
                    sample = Sample(tags[row], devices[row], value, good, ts_ns)
                    samples.append(sample)
                    if sink is not None:
                        try:
                            sink(sample)
                        except Exception:  # a full queue or closed buffer must not stop inference
                            self.sink_dropped += 1
                    if judge and (rule := rules[row]) is not None:
                        transition = rule.update(sample, now)
                        if transition is not None:
                            changes.append((rule, transition))
        return samples, changes

    def tick_rules(self, now: float | None = None) -> list[tuple[ForecastRule, Transition]]:
        """Staleness of the pre-alarm rules (the engine ticks them once attached)."""
        if self._engine_owned:
            return []
        now = self._clock() if now is None else now
        changes = []
        for rule in self.rules.values():
            transition = rule.tick(now)
            if transition is not None:
                changes.append((rule, transition))
        return changes

    def step(
        self, sink: Sink | None = None
    ) -> tuple[list[Sample], list[tuple[ForecastRule, Transition]]]:
        """gather + score + publish in the calling thread (tests, benchmarks)."""
        samples, changes = self.publish(self.score(self.gather()), sink)
        return samples, changes + self.tick_rules()

    # -- hot swap ------------------------------------------------------------------------

    def _stamp(self, name: str) -> tuple[float, float]:
        card = self._card_path(name)
        try:
            onnx = self.models_dir / self.slots[name].model.card.file
            return (card.stat().st_mtime_ns, onnx.stat().st_mtime_ns)
        except (OSError, KeyError):
            return (-1.0, -1.0)

    def changed_models(self) -> list[str]:
        """Models whose card or ONNX file changed and then stayed unchanged for one check."""
        ready: list[str] = []
        for name in self.slots:
            stamp = self._stamp(name)
            if stamp == self._stamps[name]:
                self._pending.pop(name, None)
                continue
            if self._pending.get(name) == stamp:
                ready.append(name)  # settled: unchanged since the last check
            self._pending[name] = stamp
        return ready

    def prepare_swap(self, name: str) -> LoadedModel:
        """Verify and open the new files (blocking; run it in a worker thread)."""
        return load_model(self._card_path(name), intra_op_threads=self.settings.intra_op_threads)

    def swap(self, name: str, model: LoadedModel) -> None:
        """Replace the running model in one assignment; refuse an incompatible one."""
        slot = self.slots[name]
        old = slot.model.card
        new = model.card
        if new.name != old.name or new.sensor_kind != old.sensor_kind:
            raise ModelRefused(
                f"{model.path}: is {new.name!r} for {new.sensor_kind!r}, "
                f"the running model is {old.name!r} for {old.sensor_kind!r}"
            )
        if [o.name for o in new.outputs] != [o.name for o in old.outputs] or (
            new.decision.output != old.decision.output
        ):
            raise ModelRefused(
                f"{model.path}: outputs {[o.name for o in new.outputs]} differ from the running "
                f"model's {[o.name for o in old.outputs]}; restart the gateway to change them"
            )
        if new.features != old.features:
            slot._allocate(new, self._clock())  # another window: the buffers start again
        slot.model = model
        self._stamps[name] = self._stamp(name)
        self._pending.pop(name, None)
        for rule in self.rules.values():
            if rule.model == name:
                rule.decision = new.decision
        self.swaps += 1
        log.info("inference: %s swapped to %s (sha256 %s)", name, model.path, new.sha256[:12])

    def refuse_swap(self, name: str, error: Exception) -> None:
        self._stamps[name] = self._stamp(name)  # retry only after the next change
        self._pending.pop(name, None)
        self.swaps_refused += 1
        log.error("inference: new model for %s refused, keeping the running one: %s", name, error)

    # -- the task --------------------------------------------------------------------

    async def run(
        self,
        sink: Sink | None,
        on_prealarm: Callable[[ForecastRule, Transition], None] | None = None,
        *,
        swap_check_s: float = 5.0,
    ) -> None:
        """Score every tick until cancelled: gather in the loop, score in a worker thread,
        publish in the loop; look for new model files every ``swap_check_s``."""
        period = self.settings.tick_ms / 1000
        next_check = self._clock() + swap_check_s
        while True:
            await asyncio.sleep(period)
            batches = self.gather()
            if batches:
                await asyncio.to_thread(self.score, batches)
            _, changes = self.publish(batches, sink)
            changes += self.tick_rules()
            if on_prealarm is not None:
                for rule, transition in changes:
                    on_prealarm(rule, transition)
            if self._clock() >= next_check:
                next_check = self._clock() + swap_check_s
                await self.swap_changed()

    async def swap_changed(self) -> list[str]:
        """Hot-swap every model whose files changed and settled; returns those swapped."""
        swapped: list[str] = []
        for name in self.changed_models():
            try:
                model = await asyncio.to_thread(self.prepare_swap, name)
                self.swap(name, model)
            except ModelRefused as exc:
                self.refuse_swap(name, exc)
                continue
            swapped.append(name)
        return swapped

    def alarm_event(self, rule: ForecastRule, transition: Transition) -> wire.AlarmEvent:
        """The wire alarm for a pre-alarm change (kind ``forecast``, no actuators)."""
        out = self.outputs[rule.output_tag]
        cfg = self.site.config
        d = rule.decision
        value = "n/a" if transition.value is None else f"{transition.value:.3g}"
        if transition.level.value == "alarm":
            sign = ">=" if d.direction == "high" else "<="
            text = f"pre-alarm: {d.output} {value} {sign} {d.threshold:g}"
        elif transition.level.value == "fault":
            text = "pre-alarm unknown: the model has had no input for too long"
        else:
            text = f"pre-alarm ended: {d.output} {value}"
        return wire.AlarmEvent(
            gateway=cfg.gateway.id,
            site=cfg.site.id,
            seq=0,
            alarm_id=uuid.uuid4().hex,
            tag=rule.tag,
            device=out.device,
            kind="forecast",
            area=out.area,
            position=out.position,
            level=transition.level.value,
            previous=transition.previous.value,
            value=transition.value,
            threshold=transition.threshold,
            ts_ns=transition.ts_ns,
            message=f"{rule.tag} in {out.area}: model {rule.model}: {text} "
            "(advisory; no actuator is commanded by a model)",
        )

    def counters(self) -> dict[str, int]:
        return {
            "inference_samples": self.samples_offered,
            "inference_windows": self.windows_scored,
            "inference_errors": self.score_errors,
            "inference_deferred": sum(s.dropped_rows for s in self.slots.values()),
            "inference_swaps": self.swaps,
            "inference_swaps_refused": self.swaps_refused,
            "inference_sink_dropped": self.sink_dropped,
        }


def install(card_path: str | Path, models_dir: str | Path) -> Path:
    """Copy a card and its ONNX file into ``models_dir``: ONNX first, then the card, each
    by atomic rename, after verifying the pair. Returns the installed card path."""
    model = load_model(card_path)  # refuse before touching the target
    src = Path(card_path)
    dest = Path(models_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (model.card.file, src.name):
        blob = (src.parent / name).read_bytes()
        tmp = dest / f".{name}.tmp"
        with tmp.open("wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(dest / name)
    return dest / src.name
