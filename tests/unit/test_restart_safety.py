"""Restart safety, restore hold and over range: a restart never releases a cut,
a flapping value cannot chatter a breaker, full scale never reads as good."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

import wire
from device_drivers import Quality, Sample
from edge.actuation import Interlock
from edge.alarms import AlarmManager
from edge.engine import SafetyEngine
from edge.latches import LatchStore
from edge.rules import Condition
from tests.unit.test_interlock import make_site


class Rig:
    """An engine on a fake clock with a latch store on disk (a 'gateway' without buses)."""

    def __init__(self, state: Path, now: float = 0.0) -> None:
        self.site = make_site()
        self.now = [now]
        self.events: list[wire.AlarmEvent] = []
        self.uplink: asyncio.Queue[Sample] = asyncio.Queue()
        self.lock = Interlock(self.site, clock=lambda: self.now[0])
        self.latches = LatchStore(state)
        self.engine = SafetyEngine(
            self.site,
            self.lock,
            AlarmManager(self.site, self.events.append),
            self.uplink,
            clock=lambda: self.now[0],
            latches=self.latches,
        )

    def read(self, tag: str, value: float | None, *, quality: Quality = Quality.GOOD) -> None:
        reason = None if value is not None else "timeout"
        if quality is Quality.BAD and value is not None:
            reason = "out_of_range"
        self.engine.handle(Sample(tag, "gas", value, quality, 1, reason))

    def both(self, t1: float, t2: float, dt: float = 1.0) -> None:
        self.read("CH4_T1", t1)
        self.read("CH4_T2", t2)
        self.now[0] += dt

    def last_sent(self) -> Sample:
        last = self.uplink.get_nowait()
        while not self.uplink.empty():
            last = self.uplink.get_nowait()
        return last

    @property
    def power(self) -> bool | None:
        return self.lock.desired("power")

    def restart(self) -> Rig:
        """A new process: new engine, same disk (SIGKILL loses memory, not the page cache)."""
        return Rig(self.latches.path, self.now[0])


def settle(rig: Rig) -> None:
    for _ in range(6):
        rig.both(0.3, 0.3)
    assert rig.power is False


def test_no_saved_state_first_reading_judged_as_cut_then_held(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    rig.both(1.2, 0.3)  # 1.2 >= restore 1.0: stays cut (the measured bug released here)
    assert rig.power is True and rig.engine.levels()["CH4_T1"] is Condition.CUT
    for _ in range(10):
        rig.both(1.2, 0.3)
        assert rig.power is True
    rig.both(0.3, 0.3)  # below restore: the hold (4 x 1 s poll) starts
    for _ in range(3):
        assert rig.power is True
        rig.both(0.3, 0.3)
    rig.both(0.3, 0.3)
    assert rig.power is False


def test_restart_after_a_cut_at_1_2_percent_never_releases(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    rig.both(1.6, 0.3)
    assert rig.power is True
    rig.both(1.2, 0.3)
    for _ in range(5):  # SIGKILL/SIGTERM at 1.2 %, five times
        rig = rig.restart()
        assert rig.engine.restored
        assert rig.power is True, "restored cut is asserted before the first read"
        for _ in range(6):
            rig.both(1.2, 0.3)
            assert rig.power is True


def test_restart_at_1_6_percent_keeps_the_cut(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    rig.both(1.6, 0.3)
    rig = rig.restart()
    assert rig.power is True
    rig.both(1.6, 0.3)
    assert rig.power is True


def test_restart_when_normal_starts_normal_without_hold(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    rig = rig.restart()
    assert rig.power is None  # undecided until every cause is read
    rig.both(0.3, 0.3)
    assert rig.power is False


def test_corrupt_state_file_means_fail_safe_start(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{ not json", encoding="utf-8")
    rig = Rig(state)
    assert not rig.engine.restored
    rig.both(0.3, 0.3)
    assert rig.power is True  # judged as if cut: held for the restore hold


def test_state_file_written_before_the_interlock_acts(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    seen: list[str] = []
    observe = rig.lock.observe

    def spy(cause: str, trips: bool, now: float | None = None) -> list[str]:
        saved = LatchStore(tmp_path / "state.json").load()
        assert saved is not None
        seen.append(saved[cause]["condition"])
        return observe(cause, trips, now)

    rig.lock.observe = spy  # type: ignore[method-assign]
    rig.read("CH4_T1", 1.7)
    assert seen == ["cut"]


def test_flapping_at_the_return_limit_cannot_chatter_the_breaker(tmp_path: Path) -> None:
    """cut == restore == 1.0 (return): 30 s of flapping 0.99/1.01 at a 0.5 s poll."""
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    changes = 0
    last = rig.power
    for i in range(60):
        rig.both(0.3, 1.01 if i % 2 == 0 else 0.99, dt=0.5)
        if rig.power != last:
            changes += 1
            last = rig.power
    assert changes == 1  # cut once, never released while flapping (measured before: 15)
    assert rig.power is True


def test_alarm_deadband_stops_alarm_chatter(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    rig.events.clear()
    for i in range(40):  # face: alarm 1.0, clears below 0.95
        rig.both(1.0 if i % 2 == 0 else 0.97, 0.3)
    assert [e.level for e in rig.events if e.tag == "CH4_T1"] == ["alarm"]


def test_full_scale_is_over_range_uncertain_and_latched_until_reset(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    rig.read("CH4_T1", 4.0)  # at full scale: good from the driver, over range here
    sent = rig.last_sent()
    assert sent.quality is Quality.UNCERTAIN and sent.reason == "over_range"
    assert rig.power is True
    assert rig.events[-1].reason == "over_range"
    # catalytic: falsely low afterwards; the cut stays until an engineer resets it
    for _ in range(10):
        rig.both(0.2, 0.3)
        assert rig.power is True
    rig = rig.restart()  # the latch survives a restart
    for _ in range(10):
        rig.both(0.2, 0.3)
        assert rig.power is True
    assert rig.engine.reset_latch("CH4_T1", "engineer")
    for _ in range(5):
        rig.both(0.2, 0.3)
    assert rig.power is False


def test_beyond_full_scale_bad_from_the_poller_is_still_over_range(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "state.json")
    settle(rig)
    rig.read("CH4_T2", 5.2, quality=Quality.BAD)
    sent = rig.last_sent()
    assert sent.quality is Quality.UNCERTAIN and sent.reason == "over_range"
    assert rig.engine.levels()["CH4_T2"] is Condition.CUT


def test_old_alarm_payload_without_reason_still_decodes() -> None:
    event = wire.AlarmEvent(
        gateway="g", site="s", seq=1, alarm_id="a", tag="t", device="d", kind="ch4", area="x",
        position="face", level="cut", previous="normal", value=1.6, threshold=1.5, ts_ns=1,
        message="m",
    )  # fmt: skip
    raw = msgspec.json.decode(wire.encode(event))
    del raw["reason"]
    assert wire.decode(msgspec.json.encode(raw)) == event
