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


@contextmanager
def child(
    args: list[str], log: Path, stop_timeout_s: float = 15.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m safewatch.cli ARGS`` with output to ``log``; SIGTERM it on exit
    (SIGKILL after ``stop_timeout_s``). Benchmarks and the integration tests share it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "safewatch.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
