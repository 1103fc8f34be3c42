"""``safewatch sim run`` as a real process: ready line, coil changes, clean stop, errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_drivers.modbus import DataType, ModbusTcpDriver, decode
from tests.support import free_port, wait_until

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
DEMO_SITE = ROOT / "firmware_configs" / "sites" / "demo-mine.yaml"


class _Process:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "safewatch.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(stdout.readline, "")), daemon=True
        )
        self._reader.start()

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _site_on(tmp_path: Path, port: int) -> Path:
    text = DEMO_SITE.read_text(encoding="utf-8").replace("port: 5020", f"port: {port}")
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sim_process(tmp_path: Path, port: int) -> Iterator[_Process]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "name: ramp\nduration_s: 1\ntags:\n  CH4_1201_T2: [[0, 0.5], [1, 1.25]]\n",
        encoding="utf-8",
    )
    proc = _Process(
        "sim", "run", "--config", str(_site_on(tmp_path, port)),
        "--scenario", str(scenario), "--speed", "2", "--no-loop",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


async def test_sim_run_serves_plays_prints_coils_and_stops_on_sigterm(
    sim_process: _Process, port: int
) -> None:
    wait_until(lambda: sim_process.saw("simulator ready"), 20, "the ready line")
    [ready] = [line for line in sim_process.lines if "simulator ready" in line]
    assert f"127.0.0.1:{port}" in ready
    assert "units 1, 2, 3, 10" in ready

    drv = ModbusTcpDriver("face-net", "127.0.0.1", port, 1.0)
    try:
        # the scenario ends at 1.25 % (hundredths in a uint16) and holds it
        wait_until(lambda: sim_process.saw("finished"), 10, "the scenario to finish")
        assert await drv.read_registers(2, "holding", 0, 1) == [125]
        # tags the scenario does not list hold nominal
        regs = await drv.read_registers(1, "holding", 0, 2)
        assert decode(regs, DataType.FLOAT32) == pytest.approx(0.3)
        await drv.write_coil(10, 0, True)
        wait_until(lambda: sim_process.saw("coil power-1201 <- True (ACTIVE)"), 5, "coil line")
        await drv.write_coil(10, 0, True)  # a repeat is not a change
        await drv.write_coil(10, 0, False)
        wait_until(lambda: sim_process.saw("coil power-1201 <- False"), 5, "coil off line")
        assert sum("coil power-1201" in line for line in sim_process.lines) == 2
    finally:
        await drv.close()

    sim_process.proc.send_signal(signal.SIGTERM)
    assert sim_process.proc.wait(timeout=10) == 0
    wait_until(lambda: sim_process.saw("simulator stopped"), 5, "the stop line")


def test_sim_run_stops_on_sigint(tmp_path: Path, port: int) -> None:
    proc = _Process("sim", "run", "--config", str(_site_on(tmp_path, port)))
    try:
        wait_until(lambda: proc.saw("simulator ready"), 20, "the ready line")
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(timeout=10) == 0
    finally:
        proc.stop()


def test_sim_run_reports_config_errors_with_lines(tmp_path: Path, port: int) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(
        "name: bad\nduration_s: 5\ntags:\n  NOPE: [[0, 1]]\n  CH4_1201_T1: [[1, 1]]\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "safewatch.cli", "sim", "run",
         "--config", str(_site_on(tmp_path, port)), "--scenario", str(scenario)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{scenario}:5: tags.CH4_1201_T1.0.0:" in result.stderr
    assert "simulator not started" in result.stderr
    assert "simulator ready" not in result.stdout

    bad_site = tmp_path / "bad-site.yaml"
    bad_site.write_text(
        DEMO_SITE.read_text(encoding="utf-8").replace("unit_id: 2", "unit_id: 1"),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "safewatch.cli", "sim", "run", "--config", str(bad_site)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{bad_site}:" in result.stderr
    assert "unit 1 on bus 'face-net' is already device 'ch4-1201-t1'" in result.stderr


def test_sim_run_reports_a_busy_port(tmp_path: Path, port: int) -> None:
    first = _Process("sim", "run", "--config", str(_site_on(tmp_path, port)))
    try:
        wait_until(lambda: first.saw("simulator ready"), 20, "the first simulator")
        result = subprocess.run(
            [sys.executable, "-m", "safewatch.cli", "sim", "run",
             "--config", str(_site_on(tmp_path, port))],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
        assert result.returncode == 1
        assert "cannot start simulator" in result.stderr
    finally:
        first.stop()
