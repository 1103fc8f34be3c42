"""Async Modbus TCP driver: one object per bus endpoint (host:port).

One owner task per bus calls this driver; requests on one TCP connection are
answered one at a time anyway, so callers serialise on the driver rather than
opening several connections to the same gateway.

Time limits are ours, not pymodbus's: every call runs under
``asyncio.timeout(timeout_s)`` and pymodbus is built with ``retries=0``, no
automatic reconnect and a longer internal timeout so it never fires first.

Late answers. After a timeout the device may still answer. pymodbus (>= 3.9.2)
stamps every request with a fresh MBAP transaction id and its socket framer
skips any frame whose transaction id or unit id is not the outstanding
request's, so a late answer is dropped instead of being taken as the answer
to the next request. We keep the connection after a timeout (a dead unit must
not cost its bus-mates a reconnect) and rely on that check; the contract test
``test_late_answer_is_never_taken_for_the_next_request`` holds pymodbus to it.

Reconnects are lazy: a call on a closed connection tries to connect once; if
that fails, further calls raise :class:`DeviceUnavailable` at once until a
capped, jittered exponential backoff has passed (callers are never blocked for
the backoff).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from device_drivers._errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnavailable,
)

__all__ = ["ModbusTcpDriver"]

# Modbus application protocol limits per request.
_MAX_READ_REGISTERS = 125
_MAX_READ_COILS = 2000

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusTcpDriver:
    """Modbus TCP client for one bus endpoint, with our timeouts and error tree.

    Errors (all :class:`device_drivers.DriverError`, cause kept):

    - :class:`DeviceTimeout`: no answer within ``timeout_s`` (or ``ModbusIOException``);
    - :class:`DeviceUnavailable`: cannot connect, connection lost, or backing off;
    - :class:`DeviceException`: the device answered with a Modbus exception;
    - :class:`DecodeError`: the answer has the wrong number of values.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        timeout_s: float,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.name = name
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._client: AsyncModbusTcpClient | None = None
        self._failures = 0  # consecutive failed connects
        self._next_attempt = 0.0  # time.monotonic() before which we do not try to connect
        self._connect_lock: asyncio.Lock | None = None
        self._in_flight = False  # a request is waiting for its answer

    def __repr__(self) -> str:
        return f"ModbusTcpDriver({self.name!r}, {self.host}:{self.port})"

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    # -- connection ------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now (ignoring any backoff); raise :class:`DeviceUnavailable` on failure."""
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.connected:
                return
            await self._open()

    async def close(self) -> None:
        """Close the connection; a later call reconnects."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _open(self) -> None:
        await self.close()
        # pymodbus's own timeout is longer than ours, so asyncio.timeout() always decides.
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.name,
            timeout=self.timeout_s * 2 + 1.0,
            retries=0,
            reconnect_delay=0,  # no background reconnect task: we reconnect lazily
            trace_connect=lambda up: None if up else self._lost(client),
        )
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except TimeoutError as exc:
            client.close()
            self._connect_failed()
            raise DeviceUnavailable(self.name, f"connect to {where} timed out") from exc
        except OSError as exc:
            client.close()
            self._connect_failed()
            raise DeviceUnavailable(self.name, f"cannot connect to {where}: {exc}") from exc
        if not ok:
            client.close()
            self._connect_failed()
            # pymodbus logs and swallows the OSError; keep a library exception as the cause
            raise DeviceUnavailable(
                self.name, f"cannot connect to {where} (refused or unreachable)"
            ) from ConnectionException(f"connect to {where} failed")
        self._client = client
        self._failures = 0
        self._next_attempt = 0.0

    def _lost(self, client: AsyncModbusTcpClient) -> None:
        """The peer closed the connection: fail a waiting request now, not at its timeout.

        pymodbus leaves the request waiting on ``ctx.response_future`` until its
        timeout; failing that future makes ``execute`` raise at once. If a later
        pymodbus drops the attribute we fall back to the timeout path.
        """
        if not self._in_flight or client is not self._client:
            return
        future = getattr(getattr(client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection closed by the peer"))

    def _connect_failed(self) -> None:
        self._failures += 1
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (self._failures - 1))
        # "equal jitter": at least half the step, so retries from many gateways spread out
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        self._next_attempt = time.monotonic() + delay

    async def _ready_client(self, device: str) -> AsyncModbusTcpClient:
        client = self._client
        if client is not None and client.connected:
            return client
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            raise DeviceUnavailable(
                device,
                f"{self.host}:{self.port} not connected; next reconnect attempt in {wait:.2f} s",
            )
        try:
            await self.connect()
        except DeviceUnavailable as exc:
            raise DeviceUnavailable(device, exc.message) from exc.__cause__
        assert self._client is not None
        return self._client

    # -- requests --------------------------------------------------------------------

    async def _call(
        self, device: str, what: str, request: Callable[[AsyncModbusTcpClient], Awaitable[Any]]
    ) -> Any:
        client = await self._ready_client(device)
        self._in_flight = True
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await request(client)
        except TimeoutError as exc:
            if not client.connected:
                await self.close()
                raise DeviceUnavailable(device, f"connection lost during {what}") from exc
            raise DeviceTimeout(device, f"no answer to {what} within {self.timeout_s} s") from exc
        except ConnectionException as exc:
            await self.close()
            raise DeviceUnavailable(device, f"connection lost during {what}: {exc}") from exc
        except ModbusIOException as exc:
            raise DeviceTimeout(device, f"no valid answer to {what}: {exc}") from exc
        except OSError as exc:
            await self.close()
            raise DeviceUnavailable(device, f"connection error during {what}: {exc}") from exc
        except ModbusException as exc:
            raise DeviceException(device, f"{what} failed: {exc}") from exc
        finally:
            self._in_flight = False
        if response is None:  # pragma: no cover - only with no_response_expected
            raise DeviceTimeout(device, f"no answer to {what}")
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            text = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceException(device, f"{what} refused: exception {code} ({text})")
        return response

    def _device(self, unit: int, device: str | None) -> str:
        return device or f"{self.name} unit {unit}"

    async def read_registers(
        self,
        unit: int,
        table: Literal["holding", "input"],
        address: int,
        count: int,
        *,
        device: str | None = None,
    ) -> list[int]:
        """Read ``count`` holding or input registers starting at ``address``.

        ``device`` names the device in errors (default: ``"<bus> unit <unit>"``).
        """
        _check(unit, address, count, _MAX_READ_REGISTERS)
        name = self._device(unit, device)
        what = f"read {table} {address}+{count}"
        if table == "holding":
            response = await self._call(
                name,
                what,
                lambda c: c.read_holding_registers(address, count=count, device_id=unit),
            )
        elif table == "input":
            response = await self._call(
                name,
                what,
                lambda c: c.read_input_registers(address, count=count, device_id=unit),
            )
        else:
            raise ValueError(f"unknown register table {table!r}")
        registers = [int(r) for r in response.registers]
        if len(registers) != count:
            raise DecodeError(name, f"{what}: got {len(registers)} register(s)")
        return registers

    async def read_coils(
        self, unit: int, address: int, count: int, *, device: str | None = None
    ) -> list[bool]:
        """Read ``count`` coils starting at ``address``."""
        _check(unit, address, count, _MAX_READ_COILS)
        name = self._device(unit, device)
        what = f"read coils {address}+{count}"
        response = await self._call(
            name, what, lambda c: c.read_coils(address, count=count, device_id=unit)
        )
        bits = [bool(b) for b in response.bits]
        if len(bits) < count:  # bits come padded to a multiple of 8
            raise DecodeError(name, f"{what}: got {len(bits)} coil(s)")
        return bits[:count]

    async def write_coil(
        self, unit: int, address: int, value: bool, *, device: str | None = None
    ) -> None:
        """Write one coil and wait for the device's echo."""
        _check(unit, address, 1, 1)
        name = self._device(unit, device)
        await self._call(
            name,
            f"write coil {address}={value}",
            lambda c: c.write_coil(address, value, device_id=unit),
        )


def _check(unit: int, address: int, count: int, max_count: int) -> None:
    if not 0 <= unit <= 255:
        raise ValueError(f"unit {unit} is not 0..255")
    if not 1 <= count <= max_count:
        raise ValueError(f"count {count} is not 1..{max_count}")
    if not address >= 0 or address + count > 65536:
        raise ValueError(f"address {address}+{count} is outside 0..65535")
