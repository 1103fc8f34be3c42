"""The columnar read path: a device read decoded as one block, judged as one block.

Every check here compares the block path with the per-sample path it replaces, on the
same inputs: the decoder against ``decode_block``, ``SafetyEngine.handle_block`` against
``handle`` per sample (conditions, reasons, actuators, alarms, uplink samples, counts,
with time passing and ticks), the uplink queue and batcher against single samples.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest

import wire
from device_drivers import DeviceSpec, PointSpec, Quality, Sample, SampleBlock
from device_drivers.modbus import (
    DataType,
    ModbusPoint,
    Order,
    decode_block,
    decode_columns,
    plan_reads,
)
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.config import LoadedSite, RateRule, SiteConfig, Thresholds
from edge.engine import SafetyEngine
from edge.rules import RateOfChange
from edge.uplink.batcher import SampleQueue, TelemetryBatcher
from tests.safety_rig import PROFILES

# -- decoding -----------------------------------------------------------------------


def _random_device(rng: random.Random) -> DeviceSpec:
    points = []
    address = 0
    shared = rng.random() < 0.5  # one range for all points (the usual case) or mixed
    for i in range(rng.randint(1, 40)):
        address += rng.choice([0, 1, 2, 3, 6]) if i else rng.choice([0, 7])
        low, high = (-50.0, 1000.0) if shared else rng.choice([(-50.0, 1000.0), (0.0, 4.0)])
        points.append(
            PointSpec(
                f"P{i}",
                ModbusPoint(
                    rng.choice(["holding", "input"]),
                    address,
                    rng.choice(list(DataType)),
                    rng.choice([Order.BIG, Order.BIG, Order.LITTLE]),
                    rng.choice([Order.BIG, Order.BIG, Order.LITTLE]),
                ),
                rng.choice([1.0, 1.0, 0.1, 2.5, -1.0]),
                rng.choice([0.0, 0.0, 3.0]),
                low,
                high,
            )
        )
    return DeviceSpec("d", 1, tuple(points))


def _random_registers(rng: random.Random, count: int) -> list[int]:
    special = [0, 1, 0x3F80, 0x4120, 0x7FC0, 0x7F80, 0xFF80, 0x7FA0, 0xFFFF]
    return [
        rng.randint(0, 0xFFFF) if rng.random() < 0.5 else rng.choice(special) for _ in range(count)
    ]


def _same(a: Sample, b: Sample) -> None:
    assert (a.tag, a.device, a.quality, a.reason, a.ts_ns) == (
        b.tag,
        b.device,
        b.quality,
        b.reason,
        b.ts_ns,
    ), (a, b)
    assert a.value == b.value or (a.value is None and b.value is None), (a, b)


def test_columns_decode_exactly_as_the_sample_decoder() -> None:
    """Random plans (every type, word and byte order, gaps, overlaps, scales, ranges)
    and random registers (NaN, inf, signalling NaN included): same values and qualities."""
    rng = random.Random(8)
    for _ in range(300):
        device = _random_device(rng)
        plan = plan_reads(device)
        n = len(device.points)
        for _ in range(4):
            by_sample: list[Sample | None] = [None] * n
            values = [0.0] * n
            stamps = [0] * n
            odd: dict[int, Sample] = {}
            for ts, block in enumerate(plan.blocks, start=100):
                registers = _random_registers(rng, block.count)
                decode_block(block, registers, "d", ts, by_sample)
                decode_columns(block, registers, "d", ts, values, stamps, odd)
            columns = SampleBlock(plan.tags, "d", values, stamps, odd)
            assert len(columns) == n
            for i, (a, b) in enumerate(zip(by_sample, columns, strict=True)):
                assert a is not None
                _same(a, b)
                _same(a, columns[i])
                if b.quality is not Quality.GOOD:
                    assert math.isnan(values[i]) and i in odd


def test_columns_decode_the_answer_bytes_exactly_as_the_registers() -> None:
    """The driver's read path hands the decoder the answer's register bytes as they came
    off the wire: the same columns as from the registers as ints, on random plans."""
    rng = random.Random(88)
    for _ in range(300):
        device = _random_device(rng)
        plan = plan_reads(device)
        n = len(device.points)
        from_ints: tuple[list[float], list[int], dict[int, Sample]] = ([0.0] * n, [0] * n, {})
        from_bytes: tuple[list[float], list[int], dict[int, Sample]] = ([0.0] * n, [0] * n, {})
        for ts, block in enumerate(plan.blocks, start=100):
            registers = _random_registers(rng, block.count)
            data = struct.pack(f">{block.count}H", *registers)
            decode_columns(block, registers, "d", ts, *from_ints)
            decode_columns(block, data, "d", ts, *from_bytes)
        a = SampleBlock(plan.tags, "d", *from_ints)
        b = SampleBlock(plan.tags, "d", *from_bytes)
        assert from_ints[1] == from_bytes[1]
        for x, y in zip(a, b, strict=True):
            _same(x, y)


def test_answer_bytes_of_the_wrong_length_are_decode_errors() -> None:
    spec = DeviceSpec(
        "d", 1, tuple(PointSpec(f"P{i}", ModbusPoint("holding", 2 * i)) for i in range(3))
    )
    (block,) = plan_reads(spec).blocks
    for data in (b"", b"\x00" * (2 * block.count - 1), b"\x00" * (2 * block.count + 2)):
        values, stamps, odd = [0.0] * 3, [0] * 3, dict[int, Sample]()
        decode_columns(block, data, "d", 7, values, stamps, odd)
        assert all(math.isnan(v) for v in values)
        assert [(s.quality, s.reason) for s in odd.values()] == [(Quality.BAD, "decode")] * 3


@pytest.mark.parametrize(
    "registers", [[1, 2, 3], [0x3F80, 0, 0x3F80, 0, 0], [70000, 0, 0x3F80, 0], [-1, 0, 1, 0]]
)
def test_a_malformed_block_is_decode_errors_not_an_exception(registers: list[int]) -> None:
    device = DeviceSpec(
        "d", 1, tuple(PointSpec(f"P{i}", ModbusPoint("holding", 2 * i), 1.0, 0.0, 0.0, 4.0)
                      for i in range(2))
    )  # fmt: skip
    (block,) = plan_reads(device).blocks
    values, stamps = [0.0, 0.0], [0, 0]
    odd: dict[int, Sample] = {}
    decode_columns(block, registers, "d", 7, values, stamps, odd)
    assert [odd[i].reason for i in range(2)] == ["decode", "decode"]
    assert all(math.isnan(v) for v in values) and stamps == [7, 7]


# -- judging ------------------------------------------------------------------------

_TAGS = ("CH4", "CH4R", "O2", "CO", "DLY", "LEL", "AIR")


def _site() -> LoadedSite:
    """One gas device with methane (fail-safe, cut, restore hold), methane with a rate rule
    on it (never on the fast path), O2 (direction low, cut), CO (no cut), a tag with alarm
    on/off delays, LEL and air velocity (low, no cut); each tag cuts ``power``."""
    delayed = PROFILES["co"].model_copy(
        update={
            "id": "delayed",
            "thresholds": {
                "default": Thresholds(
                    alarm=30.0, alarm_on_delay_s=1.5, alarm_off_delay_s=1.0, source="test"
                )
            },
        }
    )
    profiles = {**PROFILES, "delayed": delayed}

    def tag(name: str, profile: str, address: int, position: str = "default") -> Any:
        return {
            "name": name,
            "profile": profile,
            "address": address,
            "location": {"area": "a1", "position": position},
            "actuators": ["power"],
        }

    config = SiteConfig.model_validate(
        {
            "site": {"id": "s1"},
            "gateway": {"id": "gw1"},
            "buses": [{"id": "net", "type": "modbus_tcp", "host": "127.0.0.1"}],
            "devices": [
                {
                    "id": "gas",
                    "bus": "net",
                    "unit_id": 1,
                    "poll_ms": 1000,
                    "tags": [
                        tag("CH4", "ch4", 0, "face"),
                        tag("CH4R", "ch4", 2, "return"),
                        tag("O2", "o2", 4),
                        tag("CO", "co", 6),
                        tag("DLY", "delayed", 8),
                        tag("LEL", "lel", 10),
                        tag("AIR", "air_velocity", 12),
                    ],
                },
                {"id": "breaker", "bus": "net", "unit_id": 10},
            ],
            "actuators": [{"id": "power", "kind": "power_cut", "device": "breaker", "coil": 0}],
            "rules": [
                {"type": "rate", "id": "ch4r-rise", "tag": "CH4R", "window_s": 5,
                 "alarm_rate": 0.5},
            ],
        }
    )  # fmt: skip
    return LoadedSite(source="test", config=config, profiles=profiles)


class _Twin:
    def __init__(self, site: LoadedSite) -> None:
        self.now = 0.0
        self.events: list[wire.AlarmEvent] = []
        self.lock = Interlock(site, clock=lambda: self.now)
        self.queue = SampleQueue(maxsize=1_000_000)
        self.engine = SafetyEngine(
            site,
            self.lock,
            AlarmManager(site, self.events.append),
            self.queue,
            clock=lambda: self.now,
        )

    def state(self) -> Any:
        rules = self.engine.rules
        return (
            {rid: (r.condition, r.reason, r.known) for rid, r in rules.items()},
            self.lock.desired("power"),
            len(self.events),
            [(e.tag, e.previous, e.level, e.reason) for e in self.events[-8:]],
            self.engine.samples,
        )

    def sent(self) -> list[tuple[Any, ...]]:
        out = []
        for item in self.queue.take_all():
            for s in item if isinstance(item, SampleBlock) else [item]:
                # a stale marker is stamped with the wall clock when the tick finds it
                ts = None if s.reason == "stale" else s.ts_ns
                out.append((s.tag, s.device, s.value, s.quality, s.reason, ts))
        return out


def _reading(rng: random.Random, tag: str, level: float) -> tuple[float | None, str | None]:
    """A value around the tag's thresholds; sometimes no value (timeout) or garbage."""
    roll = rng.random()
    if roll < 0.04:
        return None, "timeout"
    if roll < 0.06:
        return math.nan, "decode"
    spans = {"CH4": 4.0, "CH4R": 4.0, "O2": 25.0, "CO": 60.0, "DLY": 60.0, "LEL": 100.0,
             "AIR": 1.0}  # fmt: skip
    return min(spans[tag] * 1.05, max(0.0, level + rng.gauss(0, 0.08) * spans[tag])), None


def test_block_judgement_equals_sample_by_sample() -> None:
    """Two engines, one fed samples one by one, one fed the same reads as blocks: after
    every read and every tick, the same conditions, reasons, actuator, alarms, uplink."""
    site = _site()
    by_sample, by_block = _Twin(site), _Twin(site)
    rng = random.Random(1302)
    levels = {"CH4": 0.3, "CH4R": 0.3, "O2": 20.9, "CO": 5.0, "DLY": 10.0, "LEL": 5.0,
              "AIR": 0.6}  # fmt: skip
    quiet_taken = 0
    for step in range(2000):
        if step % 40 == 0:  # wander: sometimes far from every threshold, sometimes across
            span = {"CH4": 2.0, "CH4R": 2.0, "O2": 6.0, "CO": 40.0, "DLY": 40.0, "LEL": 60.0,
                    "AIR": 0.5}  # fmt: skip
            for tag in levels:
                base = {"O2": 20.9, "AIR": 0.6}.get(tag, 0.3)
                levels[tag] = max(0.0, base + rng.uniform(-0.3, 1.0) * span[tag] * rng.random())
        ts = 1_000 + step
        values: list[float] = []
        odd: dict[int, Sample] = {}
        samples: list[Sample] = []
        for i, tag in enumerate(_TAGS):
            value, reason = _reading(rng, tag, levels[tag])
            if (
                reason is None
                and value is not None
                and value >= site.profile_of(site.tag(tag)[1]).range.max
            ):
                reason = "over_range"
            if reason is None:
                sample = Sample(tag, "gas", value, Quality.GOOD, ts)
                values.append(value)  # type: ignore[arg-type]
            else:
                quality = Quality.UNCERTAIN if reason == "over_range" else Quality.BAD
                sample = Sample(tag, "gas", None if reason != "over_range" else value,
                                quality, ts, reason)  # fmt: skip
                values.append(math.nan)
                odd[i] = sample
            samples.append(sample)
        for sample in samples:
            by_sample.engine.handle(sample)
        fast_before = by_block.engine.samples
        by_block.engine.handle_block(SampleBlock(_TAGS, "gas", values, [ts] * len(_TAGS), odd))
        assert by_block.engine.samples - fast_before == len(_TAGS)
        assert by_block.state() == by_sample.state(), f"step {step}"
        assert by_block.sent() == by_sample.sent(), f"step {step}"
        quiet_taken += sum(
            1 for tag in _TAGS if (r := by_block.engine.thresholds[tag])._quiet_lo < r._quiet_hi
        )
        gap = rng.choice([0.1, 0.25, 0.5, 1.0, 1.0, 4.0])  # 4 s: stale (3 x poll)
        for twin in (by_sample, by_block):
            twin.now += gap
            twin.engine.tick(twin.now)
        assert by_block.state() == by_sample.state(), f"tick after step {step}"
        assert by_block.sent() == by_sample.sent(), f"tick after step {step}"
    # the walk spent much of its time quiet, and crossed thresholds both ways
    assert quiet_taken > 2000
    kinds = {(e.previous, e.level) for e in by_block.events}
    assert {("normal", "alarm"), ("alarm", "normal"), ("normal", "cut")} <= kinds, kinds
    assert any(e.level == "fault" for e in by_block.events)


def test_quiet_band_opens_only_in_the_steady_normal_state() -> None:
    site = _site()
    twin = _Twin(site)
    rule = twin.engine.thresholds["CH4"]
    assert not rule._quiet_lo < rule._quiet_hi  # fail-safe first reading: judged in full
    twin.engine.handle(Sample("CH4", "gas", 0.3, Quality.GOOD, 1))
    assert rule.condition == "cut"  # held until restore hold passes
    assert not rule.quiet(0.3, twin.now)
    for _ in range(10):
        twin.now += 1.0
        twin.engine.handle(Sample("CH4", "gas", 0.3, Quality.GOOD, 1))
    assert rule.condition == "normal"
    assert rule.quiet(0.3, twin.now) and not rule.quiet(1.0, twin.now)  # alarm is 1.0
    assert not rule.quiet(math.nan, twin.now)
    # staleness closes it; so does a reading over the alarm
    twin.now += 10
    twin.engine.tick(twin.now)
    assert rule.condition == "fault" and not rule.quiet(0.3, twin.now)
    # the rate-ruled tag never takes the fast path
    assert twin.engine._route(("CH4R",))[0].quiet(0.3, twin.now) is False


def test_a_tag_without_rules_is_still_counted_and_sent_by_both_paths() -> None:
    """Every reading is kept until the cloud has it, judged or not."""
    block_twin, sample_twin = _Twin(_site()), _Twin(_site())
    block = SampleBlock(("CH4", "NOPE"), "gas", [0.3, 0.5], [5, 5])
    block_twin.engine.handle_block(block)
    for sample in SampleBlock(("CH4", "NOPE"), "gas", [0.3, 0.5], [5, 5]):
        sample_twin.engine.handle(sample)
    assert block_twin.engine.samples == sample_twin.engine.samples == 2
    sent = block_twin.sent()
    assert [s[:3] for s in sent] == [("CH4", "gas", 0.3), ("NOPE", "gas", 0.5)]
    assert sent == sample_twin.sent()


# -- uplink hand-off ----------------------------------------------------------------


def test_queue_counts_samples_and_drops_a_block_that_does_not_fit_whole() -> None:
    queue = SampleQueue(maxsize=5)
    block = SampleBlock(("A", "B", "C"), "d", [1.0, 2.0, 3.0], [1, 1, 1])
    assert queue.put_block(block)
    assert queue.qsize() == 3 and not queue.full()
    queue.put_nowait(Sample("A", "d", 1.0, Quality.GOOD, 2))
    assert not queue.put_block(block)  # 4 + 3 > 5: dropped whole, every sample counted
    assert queue.dropped == 3 and queue.qsize() == 4
    queue.put_nowait(Sample("A", "d", 1.0, Quality.GOOD, 3))
    assert queue.full()
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(Sample("A", "d", 1.0, Quality.GOOD, 4))
    assert queue.dropped == 4
    assert len(queue.take_all()) == 3 and queue.qsize() == 0 and queue.empty()


def test_batcher_points_of_a_block_equal_points_of_its_samples(tmp_path: Path) -> None:
    site = _site()
    batcher = TelemetryBatcher(site, None, SampleQueue(10))  # type: ignore[arg-type]
    odd = {1: Sample("CH4R", "gas", None, Quality.BAD, 9, "timeout")}
    block = SampleBlock(("CH4", "CH4R", "O2"), "gas", [0.25, math.nan, 20.5], [8, 9, 8], odd)
    assert batcher.points_of_block(block) == [batcher.point_of(s) for s in block]
    assert batcher.points_of_block(SampleBlock(("CO",), "gas", [3.0], [1])) == [
        batcher.point_of(Sample("CO", "gas", 3.0, Quality.GOOD, 1))
    ]


def test_a_rule_added_later_sees_every_block_value() -> None:
    """add_rule (model pre-alarms) takes the tag off the fast path: the new rule is updated
    by every value of later blocks, quiet or not."""
    site = _site()
    twin = _Twin(site)
    for _ in range(10):
        twin.now += 1.0
        twin.engine.handle_block(SampleBlock(("CO",), "gas", [5.0], [1]))
    assert twin.engine.thresholds["CO"].quiet(5.0, twin.now)
    seen: list[float | None] = []

    class Recorder(RateOfChange):
        def update(self, sample: Sample, now: float) -> Any:
            seen.append(sample.value)
            return super().update(sample, now)

    twin.engine.add_rule(
        Recorder(RateRule(type="rate", id="co-rise", tag="CO", window_s=5, alarm_rate=100.0))
    )
    for value in (5.0, 6.0, 7.0):
        twin.now += 1.0
        twin.engine.handle_block(SampleBlock(("CO",), "gas", [value], [2]))
    assert seen == [5.0, 6.0, 7.0]
    assert twin.engine.thresholds["CO"].last_value == 7.0
