"""Serial line sensors: one reader per port, the latest value of each key, a reason when not.

Old gas detectors stream a text line every second or so (``CH4=0.85%``). The
driver opens the port with pyserial (non-blocking) and lets the event loop
call it when bytes arrive (``loop.add_reader`` on the port's descriptor; no
thread). Complete lines are parsed with the bus's :class:`LineFormat`; each
key's latest value and arrival time are kept.

:meth:`SerialLineDriver.read` answers from those: a key heard within
``max_age_s`` is judged (scale, range); one not heard is BAD with the reason
the line left: ``crc`` or ``decode`` if the recent lines were damaged,
``timeout`` if the detector fell silent, ``comms_lost`` if the port is gone.
A pulled cable (the device node disappears, the pty closes, the read errors)
closes the port; the next read reopens it after a capped, jittered backoff.
Nothing here ever stops the loop: a garbled line is counted
(``garbled_lines``, ``checksum_errors``) and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import serial

from device_drivers._connection import LazyConnection
from device_drivers._driver import DeviceSpec, OutputSpec, ReadPlan
from device_drivers._errors import DeviceException, DeviceUnavailable
from device_drivers._sample import Quality, Reason, Sample
from device_drivers._tty import line_parity
from device_drivers.serial._formats import MAX_LINE, LineError, LineFormat, parse_line

__all__ = ["SerialLineDriver", "SerialLink", "SerialPlan", "SerialPoint"]

log = logging.getLogger("safewatch.device_drivers.serial")


@dataclass(frozen=True, slots=True)
class SerialPoint:
    """A value in a detector's line: its key (``CH4``) or, for ``csv``, its column."""

    key: str


@dataclass(frozen=True, slots=True)
class SerialLink:
    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    def __str__(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class SerialPlan:
    """A device's keys; a read costs no request (the detector streams)."""

    __slots__ = ("device", "keys")

    def __init__(self, device: DeviceSpec) -> None:
        keys = []
        for spec in device.points:
            if not isinstance(spec.address, SerialPoint):
                raise ValueError(f"{device.id}: point {spec.name} has no serial line key")
            keys.append(spec.address.key)
        self.device = device
        self.keys = tuple(keys)

    @property
    def requests(self) -> int:
        return 0


class SerialLineDriver(LazyConnection):
    """Implements :class:`device_drivers.DeviceDriver` for a streaming text-line detector."""

    def __init__(
        self,
        name: str,
        link: SerialLink,
        fmt: LineFormat,
        max_age_s: float,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 3.0,
    ) -> None:
        if max_age_s <= 0:
            raise ValueError("max_age_s must be > 0")
        super().__init__(
            name, link.port, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
        self.link = link
        self.format = fmt
        self.max_age_s = max_age_s
        self._port: serial.Serial | None = None
        self._fd: int | None = None
        self._buffer = bytearray()
        self._latest: dict[str, tuple[float, float]] = {}  # key -> (value, monotonic)
        self._last_error: tuple[str, float] | None = None  # (reason, monotonic)
        self.lines = 0
        self.garbled_lines = 0
        self.checksum_errors = 0
        self.reopens = 0
        self._opened = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.link})"

    @property
    def connected(self) -> bool:
        return self._port is not None

    # -- the port (open(), backoff: LazyConnection) ---------------------------------------

    async def _connect(self) -> None:
        link = self.link
        try:
            port = serial.Serial(
                link.port,
                baudrate=link.baudrate,
                parity=line_parity(link.port, link.parity),
                stopbits=link.stopbits,
                bytesize=link.bytesize,
                timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnavailable(self.name, f"cannot open {link}: {exc}") from exc
        self._port = port
        self._fd = port.fileno()
        self._buffer.clear()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        self._opened += 1
        if self._opened > 1:
            self.reopens += 1
            log.info("%s: %s open again", self.name, link.port)

    async def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        port, self._port = self._port, None
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # the loop is closing
                asyncio.get_running_loop().remove_reader(fd)
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def _readable(self) -> None:
        """Called by the event loop when the port has bytes (or has gone away)."""
        port = self._port
        if port is None:
            return
        try:
            data = port.read(max(port.in_waiting, 1))
        except (serial.SerialException, OSError) as exc:
            log.warning("%s: %s lost: %s", self.name, self.link.port, exc)
            self._last_error = (Reason.COMMS_LOST, time.monotonic())
            self._drop()
            self.connect_failed()
            return
        if not data:
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take bytes from the line: complete lines are parsed, the rest waits."""
        buffer = self._buffer
        buffer += data
        now = time.monotonic()
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_LINE:  # no end of line in sight: garbage
                    buffer.clear()
                    self._bad("decode", now)
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if not line.strip():
                continue
            try:
                values = parse_line(line, self.format)
            except LineError as exc:
                self._bad(exc.reason, now)
                continue
            self.lines += 1
            latest = self._latest
            for key, value in values.items():
                latest[key] = (value, now)

    def _bad(self, reason: str, now: float) -> None:
        self.garbled_lines += 1
        if reason == "crc":
            self.checksum_errors += 1
        self._last_error = (reason, now)

    # -- DeviceDriver --------------------------------------------------------------------

    def plan(self, device: DeviceSpec) -> SerialPlan:
        return SerialPlan(device)

    async def read(self, plan: ReadPlan, *, timeout_s: float | None = None) -> Sequence[Sample]:
        if not isinstance(plan, SerialPlan):
            raise TypeError(f"{self.name}: not a serial plan: {plan!r}")
        device = plan.device.id
        if self._port is None:
            await self.ensure_open(device)
        now = time.monotonic()
        ts = time.time_ns()
        error = self._last_error
        out: list[Sample] = []
        for spec, key in zip(plan.device.points, plan.keys, strict=True):
            got = self._latest.get(key)
            if got is None or now - got[1] > self.max_age_s:
                since = got[1] if got is not None else -math.inf
                reason = error[0] if error is not None and error[1] > since else Reason.TIMEOUT
                out.append(Sample(spec.name, device, None, Quality.BAD, ts, reason))
                continue
            value = got[0] * spec.scale + spec.offset
            if value < spec.low:
                out.append(Sample(spec.name, device, value, Quality.BAD, ts, Reason.OUT_OF_RANGE))
            elif value > spec.high:
                out.append(Sample(spec.name, device, value, Quality.BAD, ts, Reason.OVER_RANGE))
            else:
                out.append(Sample(spec.name, device, value, Quality.GOOD, ts))
        return out

    async def write(self, device: DeviceSpec, output: OutputSpec, value: bool) -> bool:
        raise DeviceException(device.id, f"{self.link.port}: a line sensor has no outputs")
