"""Shared pieces for benchmarks: free ports, child processes, percentile maths."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "firmware_configs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def emit(result: dict[str, Any]) -> None:
    """Print the result as the one JSON object on the last output line."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True), flush=True)


@contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="safewatch-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


EDGE_NICE = -10  # ansible/roles/edge_gateway/templates/safewatch-edge.service.j2: Nice=
PLANT_NICE = -5  # an in-process plant simulator in the tests that time the safety loop


def can_raise_priority() -> bool:
    """Whether this process may lower niceness (root or CAP_SYS_NICE)."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, current - 1)
    except (PermissionError, OSError):
        return False
    os.setpriority(os.PRIO_PROCESS, 0, current)
    return True


@contextmanager
def priority(nice: int) -> Iterator[bool]:
    """Run the block with this process at niceness ``nice``, restored afterwards.

    The tests that time the safety loop keep their in-process plant simulator (the
    physical world, not the product) from being starved by a loaded CI machine.
    Yields whether the priority could be set (root).
    """
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except (PermissionError, OSError):
        yield False
        return
    try:
        yield True
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


PLANT_RT_PRIORITY = 5  # the bench's simulated plant, below the safety process's 10


@contextmanager
def realtime(rt_priority: int) -> Iterator[bool]:
    """Run the block with this process at SCHED_RR ``rt_priority`` (root or CAP_SYS_NICE),
    children started meanwhile reset to the normal policy (SCHED_RESET_ON_FORK).

    ``bench alarm-latency`` runs its simulated plant (the sensors and breakers a real
    gateway reaches over wires; they never share its CPUs) so, so that a machine loaded
    by other work delays the gateway it measures and not the plant's answers. Yields
    whether the policy could be set."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(rt_priority))
    except (PermissionError, OSError, AttributeError):
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, before[0], before[1])


@contextmanager
def child(
    args: list[str], log: Path, stop_timeout_s: float = 15.0, nice: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m safewatch.cli ARGS`` with output to ``log``; SIGTERM it on exit
    (SIGKILL after ``stop_timeout_s``). Benchmarks and the integration tests share it.

    ``nice``: the child's niceness. The shipped edge unit runs the gateway at
    ``EDGE_NICE`` (it holds the safety loop); tests that time the safety loop start it
    the same way. Lowering niceness needs root: without it the child keeps the
    caller's and a warning says so.
    """
    if nice < 0 and not can_raise_priority():
        warnings.warn(f"cannot run {args[:2]} at nice {nice} (not root)", stacklevel=3)
        nice = 0
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "safewatch.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # absolute: os.nice() is relative, and a caller under priority(PLANT_NICE)
            # would have started the gateway at -15, not at the unit's -10
            preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=stop_timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def private_mosquitto(work: Path, extra_conf: str = "") -> Iterator[int | None]:
    """A private broker on a free port, or None when mosquitto is not installed.

    ``extra_conf``: more mosquitto.conf lines (e.g. limits a bench must lift)."""
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        yield None
        return
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra_conf}", encoding="utf-8"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on port {port}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)
