"""The connect-on-use loop the bus drivers share (device_drivers._connection), and the
pty parity rule (device_drivers._tty), with a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import tty

import pytest
import serial

from device_drivers import DeviceUnavailable
from device_drivers._connection import LazyConnection
from device_drivers._tty import is_pty, line_parity
from device_drivers.modbus import ModbusDriver
from device_drivers.opcua import OpcUaDriver
from device_drivers.serial import SerialLineDriver


class _Endpoint(LazyConnection):
    """A bus whose endpoint refuses until ``up`` is set; counts connect attempts."""

    def __init__(self) -> None:
        super().__init__("bus-a", "10.0.0.9:502", backoff_initial_s=0.2, backoff_max_s=0.8)
        self.up = False
        self.is_open = False
        self.attempts = 0

    @property
    def connected(self) -> bool:
        return self.is_open

    async def _connect(self) -> None:
        self.attempts += 1
        await asyncio.sleep(0.01)  # a real connect yields: concurrent opens must queue
        if not self.up:
            raise DeviceUnavailable(self.name, "refused")
        self.is_open = True


def test_every_driver_uses_the_shared_loop() -> None:
    for driver in (ModbusDriver, OpcUaDriver, SerialLineDriver):
        assert issubclass(driver, LazyConnection)
        assert "open" not in vars(driver), f"{driver.__name__} has its own open()"


async def test_a_failed_connect_backs_off_then_retries_and_resets() -> None:
    bus = _Endpoint()
    with pytest.raises(DeviceUnavailable, match=r"ch4-1: refused") as first:
        await bus.ensure_open("ch4-1")
    assert first.value.device == "ch4-1" and bus.failures == 1 and bus.attempts == 1
    # within the backoff: refused at once, naming the endpoint, no connect attempt
    with pytest.raises(DeviceUnavailable, match=r"10.0.0.9:502 not connected; next reconnect"):
        await bus.ensure_open("ch4-2")
    assert bus.attempts == 1
    bus.up = True
    deadline = asyncio.get_running_loop().time() + 5
    while not bus.connected:
        assert asyncio.get_running_loop().time() < deadline, "never reconnected"
        try:
            await bus.ensure_open("ch4-1")
        except DeviceUnavailable:
            await asyncio.sleep(0.02)
    assert bus.failures == 0 and bus.attempts == 2
    # a lost connection counts as a failure, so the next open waits a backoff step
    bus.is_open = False
    bus.connect_failed()
    with pytest.raises(DeviceUnavailable, match="next reconnect attempt"):
        await bus.ensure_open("ch4-1")


async def test_the_backoff_grows_to_its_cap_with_jitter() -> None:
    bus = _Endpoint()
    loop = asyncio.get_running_loop()
    waits = []
    for _ in range(8):
        bus.connect_failed()
        waits.append(bus._next_attempt - loop.time())
    for n, wait in enumerate(waits):
        ceiling = min(0.8, 0.2 * 2**n)
        assert ceiling / 2 - 0.05 <= wait <= ceiling + 0.05, (n, wait)
    assert bus.failures == 8


async def test_concurrent_opens_connect_once() -> None:
    bus = _Endpoint()
    bus.up = True
    await asyncio.gather(*(bus.open() for _ in range(5)))
    assert bus.attempts == 1 and bus.connected


def test_bad_backoff_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        LazyConnection("x", "y", backoff_initial_s=0, backoff_max_s=1)
    with pytest.raises(ValueError, match="backoff"):
        LazyConnection("x", "y", backoff_initial_s=2, backoff_max_s=1)


def test_a_pty_opens_without_parity_and_a_real_port_keeps_its_own(tmp_path: object) -> None:
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        name = os.ttyname(slave)
        link = f"{tmp_path}/tty-link"
        os.symlink(name, link)
        assert is_pty(name) and is_pty(link)
        assert line_parity(link, "E") == "N" and line_parity(link, "O") == "N"
        # what the drivers then do: the port opens (some kernels refuse PARENB on a pty)
        serial.Serial(link, baudrate=19200, parity=line_parity(link, "E"), timeout=0).close()
        assert not is_pty("/dev/null") and line_parity("/dev/null", "E") == "E"
        assert not is_pty(f"{tmp_path}/missing") and line_parity(f"{tmp_path}/x", "O") == "O"
    finally:
        os.close(master)
        os.close(slave)
