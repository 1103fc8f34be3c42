"""The safety process (edge/safety_process.py) under faults, with the real gateway and the
real simulator:

- SIGKILL of the safety process under a cut (methane at 1.2 %, above restore, below cut):
  the gateway writes the breaker fail-safe, starts a new safety process, which restores the
  cut; the breaker is never written back on, and the cut alarm is stored once;
- SIGKILL of the gateway's main process: the safety process dies with it (no orphan holding
  the bus), and SIGTERM stops both within a few seconds;
- garbage on the link: a frame that does not decode is counted and skipped (the safety
  process keeps cutting); a stream that cannot be framed any more ends that safety
  process, and the gateway cuts fail-safe and starts a new one;
- a safety process that cannot start: the gateway does not run (`edge run` exits 1).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from bench._harness import EDGE_NICE, PLANT_NICE, child, priority
from edge.config import AnyBus, load_site
from edge.drivers import make_driver
from edge.latches import LatchStore, state_path_for
from edge.safety_link import Command, Ready, Stats
from edge.safety_process import ChildSpec, SafetyProcess, SafetyProcessError
from simulators import SiteSimulator
from tests.support import async_wait_until, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAG, ACTUATOR = "CH4_1201_T1", "power-1201"
WATCH_S = 3.0


def _site(tmp: Path, sim_port: int) -> Path:
    yaml = YAML(typ="rt")
    doc: Any = yaml.load((REPO / "firmware_configs/sites/demo-mine.yaml").read_text("utf-8"))
    doc["buses"][0]["port"] = sim_port
    doc["mqtt"]["port"] = free_port()  # no broker: the uplink is down throughout
    doc["buffer"]["path"] = str(tmp / "buffer.db")
    path = tmp / "site.yaml"
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    return path


def _writes(sim: SiteSimulator, after_ns: int, value: bool) -> list[int]:
    return [
        t for t, act, v in list(sim.coil_log) if t >= after_ns and act == ACTUATOR and v is value
    ]


def _alarms(buffer: Path) -> list[bytes]:
    """The alarm events in the gateway's durable buffer (read-only look, WAL allows it)."""
    try:
        with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute("SELECT payload FROM messages WHERE kind = 'alarm'").fetchall()
    except sqlite3.Error:
        return []
    return [bytes(r[0]) for r in rows]


def _cut_alarms(buffer: Path) -> list[bytes]:
    """The over-limit cut alarms of TAG."""
    return [a for a in _alarms(buffer) if b'"reason":"above_cut"' in a and TAG.encode() in a]


def _safety_pids(log: Path) -> list[int]:
    text = log.read_text(errors="replace")
    return [int(pid) for pid in re.findall(r"safety process (\d+) ready", text)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (its parent has not reaped it yet) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _plant_not_starved() -> Any:
    with priority(PLANT_NICE):
        yield


async def test_sigkill_of_the_safety_process_under_a_cut_never_re_energises(tmp_path: Path) -> None:
    sim_port = free_port()
    site_path = _site(tmp_path, sim_port)
    sim = SiteSimulator(load_site(site_path))
    await sim.start()
    log = tmp_path / "edge.log"
    try:
        sim.set_value(TAG, 0.3)
        with child(["edge", "run", "--config", str(site_path)], log, nice=EDGE_NICE) as proc:
            await async_wait_until(lambda: _writes(sim, 0, False), 30, "start-up hold over")
            first = (await async_wait_until(lambda: _safety_pids(log), 10, "safety pid"))[0]
            crossed = time.monotonic_ns()
            sim.set_value(TAG, 1.6)
            cut = await async_wait_until(lambda: _writes(sim, crossed, True), 5, "the cut")
            assert (cut[0] - crossed) / 1e9 <= 2.0
            await async_wait_until(lambda: _cut_alarms(tmp_path / "buffer.db"), 5, "alarm stored")
            sim.set_value(TAG, 1.2)  # above restore, below cut: the cut must hold
            killed = time.monotonic_ns()
            os.kill(first, signal.SIGKILL)
            pids = await async_wait_until(
                lambda: [p for p in _safety_pids(log) if p != first], 60, "a new safety process"
            )
            assert _alive(pids[0]) and not _alive(first)
            # the gateway wrote the breaker fail-safe itself, and the new process re-asserts
            await async_wait_until(lambda: len(_writes(sim, killed, True)) >= 2, 10, "re-assert")
            deadline = time.monotonic() + WATCH_S
            while time.monotonic() < deadline:
                assert not _writes(sim, crossed, False), log.read_text()[-3000:]
                assert sim.coil(ACTUATOR) is True
                await asyncio.sleep(0.05)
            assert proc.poll() is None
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            assert time.monotonic() - started < 8.0, "shutdown took too long"
            await async_wait_until(lambda: not _alive(pids[0]), 5, "safety process gone")
        assert proc.returncode == 0, log.read_text()[-3000:]
        # one cut alarm: neither lost with the dead process nor raised again by the new one
        assert len(_cut_alarms(tmp_path / "buffer.db")) == 1
        assert not _writes(sim, crossed, False)
    finally:
        await sim.stop()


async def test_sigkill_of_the_gateway_takes_the_safety_process_with_it(tmp_path: Path) -> None:
    sim_port = free_port()
    site_path = _site(tmp_path, sim_port)
    sim = SiteSimulator(load_site(site_path))
    await sim.start()
    log = tmp_path / "edge.log"
    try:
        sim.set_value(TAG, 0.3)
        with child(["edge", "run", "--config", str(site_path)], log, nice=EDGE_NICE) as proc:
            pid = (await async_wait_until(lambda: _safety_pids(log), 60, "safety pid"))[0]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # no orphan keeps the bus: the next gateway's safety process is its only owner
            await async_wait_until(lambda: not _alive(pid), 5, "the safety process died too")
    finally:
        await sim.stop()


def _spec(site_path: Path, tmp: Path, factory: Any = make_driver) -> ChildSpec:
    site = load_site(site_path)
    return ChildSpec(
        site=site,
        state_path=str(tmp / "state.json"),
        buses=("face-net",),
        rules=tuple(t.name for _, t in site.tags()),
        stale_check_s=0.25,
        driver_factory=factory,
    )


async def test_garbage_on_the_link_is_skipped_or_ends_that_safety_process(tmp_path: Path) -> None:
    sim_port = free_port()
    site_path = _site(tmp_path, sim_port)
    sim = SiteSimulator(load_site(site_path))
    await sim.start()
    got: list[Any] = []
    lost: list[float] = []

    async def on_lost() -> None:
        lost.append(time.monotonic())

    safety = SafetyProcess(_spec(site_path, tmp_path), got.append, on_lost)
    try:
        sim.set_value(TAG, 0.3)
        ready = await safety.start()
        runner = asyncio.create_task(safety.run())
        await async_wait_until(lambda: _writes(sim, 0, False), 30, "breaker released")
        writer = safety._writer
        assert writer is not None
        # frames of the right shape with bodies that are not messages: counted, skipped
        for junk in (b"\xc1\xc1\xc1", b"\x93\xa4nope\x01\x02", os.urandom(64)):
            writer.write(len(junk).to_bytes(4, "big") + junk)
        assert safety.send(Command({"action": "no-such-action"}, "after-garbage"))

        def garbage_counted() -> bool:
            stats = [m for m in got if isinstance(m, Stats)]
            return bool(stats) and stats[-1].counters["link_garbage"] >= 3

        await async_wait_until(garbage_counted, 10, "garbage counted")
        stats = [m for m in got if isinstance(m, Stats)][-1]
        assert stats.counters["commands_rejected"] == 1  # the frame after the garbage arrived
        crossed = time.monotonic_ns()
        sim.set_value(TAG, 1.6)  # still protecting
        await async_wait_until(lambda: _writes(sim, crossed, True), 5, "cut after garbage")
        # a length no frame can have: the stream cannot be framed; that process ends and the
        # gateway cuts fail-safe and starts another
        writer.write(b"\xff\xff\xff\xff" + b"x" * 16)
        await async_wait_until(lambda: lost, 10, "fail-safe after a corrupt link")
        await async_wait_until(lambda: safety.starts == 2 and safety.alive, 60, "restarted")
        assert safety.pid != ready.pid and safety.restarts == 1
        readies = [m for m in got if isinstance(m, Ready)]
        assert readies and readies[-1].levels[TAG] == "cut"  # restored from the journal
        await safety.stop()
        await asyncio.wait_for(runner, 10)
        assert not _alive(safety.pid)
    finally:
        safety.stopping = True
        await safety.stop(1.0)
        await sim.stop()


def refusing_factory(bus: AnyBus) -> Any:
    raise RuntimeError(f"no driver for {bus.id} (test)")


async def test_a_safety_process_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    site_path = _site(tmp_path, free_port())

    async def on_lost() -> None:
        raise AssertionError("never started, never lost")

    safety = SafetyProcess(
        _spec(site_path, tmp_path, refusing_factory), lambda m: None, on_lost, start_timeout_s=60
    )
    with pytest.raises(SafetyProcessError, match="did not start"):
        await safety.start()
    assert not safety.alive


@pytest.mark.parametrize("layout", ["--safety-process", "--safety-thread"])
async def test_a_journalled_cut_whose_alarm_was_lost_is_announced_after_restart(
    tmp_path: Path, layout: str
) -> None:
    """The process died between the journal line and the alarm record (the window the
    lead's note names): the restarted gateway holds the cut and reports it."""
    sim_port = free_port()
    site_path = _site(tmp_path, sim_port)
    site = load_site(site_path)
    journal = LatchStore(state_path_for(tmp_path / "buffer.db", site.config.state.path))
    journal.record(TAG, {"condition": "cut", "latched_over_range": False})
    journal.close()
    sim = SiteSimulator(site)
    await sim.start()
    log = tmp_path / "edge.log"
    try:
        sim.set_value(TAG, 1.2)  # above restore, below cut: nothing new to decide
        started = time.monotonic_ns()
        with child(["edge", "run", "--config", str(site_path), layout], log, nice=EDGE_NICE):
            await async_wait_until(lambda: _writes(sim, started, True), 30, "cut re-asserted")

            def restored() -> list[bytes]:
                return [
                    a
                    for a in _alarms(tmp_path / "buffer.db")
                    if b'"reason":"restored"' in a and b'"level":"cut"' in a and TAG.encode() in a
                ]

            found = await async_wait_until(restored, 20, "the restored cut reported")
            assert b'"actuators":["power-1201"]' in found[0]
            assert b'"state":"unacknowledged"' in found[0]  # raised: the store never had it
            deadline = time.monotonic() + WATCH_S
            while time.monotonic() < deadline:
                assert not _writes(sim, started, False), log.read_text()[-3000:]
                await asyncio.sleep(0.05)
    finally:
        await sim.stop()


def test_edge_run_fails_loudly_when_its_safety_process_cannot_start(tmp_path: Path) -> None:
    """A real `edge run` whose safety process exits at once (its interpreter is /bin/false
    here: the nearest thing to a broken install that leaves the gateway itself working)."""
    site_path = _site(tmp_path, free_port())
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.executable = '/bin/false'; "
            "from safewatch.cli import app; app(prog_name='safewatch')",
            "edge",
            "run",
            "--config",
            str(site_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "the gateway does not run without its safety process" in out, out[-3000:]
    assert "did not start" in out
    assert time.monotonic() - started < 60
