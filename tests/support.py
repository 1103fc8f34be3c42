"""Helpers shared by the test levels: free ports, deadline waits, real services."""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, overload

T = TypeVar("T")

INFLUX_URL = os.environ.get("SAFEWATCH_TEST_INFLUX_URL", "http://127.0.0.1:8086")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def quiet_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999).

    ``free_port`` hands out an ephemeral port, which any outgoing connection on
    the machine may take before a slow server (asyncua builds its address space
    for seconds) binds it; ports below that range are only taken by listeners.
    """
    for _ in range(200):
        port = random.randint(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], T], timeout: float, what: str, step: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@overload
async def async_wait_until(
    condition: Callable[[], Awaitable[T]], within: float, what: str, step: float = ...
) -> T: ...


@overload
async def async_wait_until(
    condition: Callable[[], T], within: float, what: str, step: float = ...
) -> T: ...


async def async_wait_until(
    condition: Callable[[], T | Awaitable[T]], within: float, what: str, step: float = 0.02
) -> T:
    """Async twin of :func:`wait_until`; ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(step)


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_mosquitto(workdir: Path, port: int | None = None, *, extra: str = "") -> Broker:
    """Start a private Mosquitto on a free (or given) port; wait until it accepts.

    ``extra`` is appended to its config (e.g. the shipped broker limits).
    """
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = port or free_port()
    conf = workdir / f"mosquitto-{port}.conf"
    store = workdir / f"mosquitto-{port}"
    store.mkdir(exist_ok=True)
    # persistence on, as in Debian's default config: a restarted broker keeps the
    # sessions and queued QoS 1 messages of clients that asked to be remembered
    # as root, mosquitto would drop to user 'mosquitto', who cannot write under our tmp dir
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n{user}"
        f"persistence true\npersistence_location {store}/\n{extra}",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    broker = Broker("127.0.0.1", port, proc)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 10, f"mosquitto on port {port}")
    except AssertionError:
        broker.stop()
        raise
    return broker


@contextmanager
def mosquitto(workdir: Path) -> Iterator[Broker]:
    broker = start_mosquitto(workdir)
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class InfluxServer:
    """A private ``influxd`` (1.x) on free ports with its own data directory.

    Fault tests stop and start it; the shared InfluxDB on 8086 is never touched.
    ``stop()`` then ``start()`` keeps the data (same directory, same port).
    """

    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("influxd") or "/usr/bin/influxd"
        root = self.workdir / f"influxd-{self.port}"
        conf = root / "influxdb.conf"
        if not conf.exists():
            root.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f'reporting-enabled = false\nbind-address = "127.0.0.1:{free_port()}"\n'
                f'[meta]\n  dir = "{root}/meta"\n'
                f'[data]\n  dir = "{root}/data"\n  wal-dir = "{root}/wal"\n'
                "  query-log-enabled = false\n"
                f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
                "[monitor]\n  store-enabled = false\n"
                '[logging]\n  level = "warn"\n'
                "[continuous_queries]\n  enabled = false\n"
                "[retention]\n  enabled = false\n",
                encoding="utf-8",
            )
        log = (root / "influxd.log").open("ab")
        self.process = subprocess.Popen([exe, "-config", str(conf)], stdout=log, stderr=log)
        log.close()
        wait_until(lambda: port_open("127.0.0.1", self.port), 20, f"influxd on port {self.port}")

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.process = None


@contextmanager
def private_influxd(workdir: Path) -> Iterator[InfluxServer]:
    server = InfluxServer(workdir, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
