"""Serial line detectors on pseudo-terminals, from the same site file the gateway reads.

For every ``serial`` bus a pty pair is made and its slave end is linked at the
bus's ``port`` path (a symlink), so the gateway opens exactly what the YAML
says. A writer task sends one line with every tag of the bus every
``interval_s``, in the bus's ``format``.

Faults: :meth:`SerialLineSimulator.pull_cable` closes the pty and removes the
link (the gateway's port errors, the path is gone) until
:meth:`SerialLineSimulator.plug_cable`; :meth:`set_garbled` damages every
n-th line (noise bytes, or a wrong checksum for ``kv_xor``);
:meth:`set_silent` stops the detector talking with the cable still in;
:meth:`set_slow` makes it send a line only every ``delay_s`` (a sluggish detector).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from device_drivers.serial import LineFormat, format_line
from edge.config import LoadedSite, SerialLineBus, SerialTag

__all__ = ["SerialLineSimulator"]

log = logging.getLogger(__name__)


@dataclass
class _Line:
    bus: SerialLineBus
    tags: dict[str, SerialTag]
    raw: dict[str, float]  # key -> raw value as the detector sends it
    master: int | None = None
    slave: int | None = None
    plugged: bool = True
    silent: bool = False
    garble_every: int = 0
    slow_s: float = 0.0  # while > 0: a line at most every slow_s
    last_sent: float = 0.0  # time.monotonic() of the last line
    sent: int = 0
    garbled_sent: int = 0
    units: dict[str, str] = field(default_factory=dict)


class SerialLineSimulator:
    """Every ``serial`` bus of a site as a pty streaming text lines."""

    def __init__(self, site: LoadedSite, *, interval_s: float = 0.2) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.site = site
        self.interval_s = interval_s
        self._lines: dict[str, _Line] = {}
        self._by_tag: dict[str, tuple[_Line, SerialTag]] = {}
        self._task: asyncio.Task[None] | None = None
        for bus in site.config.buses:
            if isinstance(bus, SerialLineBus):
                self._lines[bus.id] = _Line(bus, {}, {})
        for device in site.config.devices:
            line = self._lines.get(device.bus)
            if line is None:
                continue
            for tag in device.tags:
                if isinstance(tag, SerialTag):
                    line.tags[tag.name] = tag
                    nominal = site.profile_of(tag).nominal
                    line.raw[tag.key] = (nominal - tag.offset) / tag.scale
                    line.units[tag.key] = site.unit_of(tag) if line.bus.format != "csv" else ""
                    self._by_tag[tag.name] = (line, tag)

    @property
    def ports(self) -> list[tuple[str, str]]:
        return [(line.bus.id, line.bus.port) for line in self._lines.values()]

    async def start(self) -> None:
        for line in self._lines.values():
            if line.plugged and line.master is None:
                self._plug(line)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="serial-sim")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for line in self._lines.values():
            self._unplug(line)

    async def __aenter__(self) -> SerialLineSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _plug(self, line: _Line) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no CR/LF translation, no echo: bytes as the detector sends them
        os.set_blocking(master, False)
        link = Path(line.bus.port)
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        line.master, line.slave = master, slave

    def _unplug(self, line: _Line) -> None:
        for fd in (line.master, line.slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        line.master = line.slave = None
        link = Path(line.bus.port)
        if link.is_symlink():
            link.unlink()

    async def _run(self) -> None:
        while True:
            for line in self._lines.values():
                self._send(line)
            await asyncio.sleep(self.interval_s)

    def _send(self, line: _Line) -> None:
        if line.master is None or line.silent or not line.raw:
            return
        now = time.monotonic()
        if line.slow_s > 0 and now - line.last_sent < line.slow_s:
            return
        line.last_sent = now
        fmt = LineFormat(line.bus.format)
        data = format_line(line.raw, fmt, line.units)
        line.sent += 1
        if line.garble_every and line.sent % line.garble_every == 0:
            line.garbled_sent += 1
            if fmt is LineFormat.KV_XOR:
                data = data[:-4] + (b"00" if data[-4:-2] != b"00" else b"FF") + b"\r\n"
            else:
                data = b"\x13#?" + data[3:-2].replace(b"=", b"\x7f") + b"\r\n"
        try:
            os.write(line.master, data)
        except BlockingIOError:
            pass  # nobody reads and the pty buffer is full: the detector just talks on
        except OSError as exc:
            log.warning("serial sim %s: write failed: %s", line.bus.id, exc)

    # -- values ------------------------------------------------------------------------

    def _tag(self, name: str) -> tuple[_Line, SerialTag]:
        try:
            return self._by_tag[name]
        except KeyError:
            raise KeyError(f"unknown serial tag {name!r}") from None

    def tags(self) -> list[str]:
        return list(self._by_tag)

    def set_value(self, tag: str, value: float) -> None:
        line, spec = self._tag(tag)
        line.raw[spec.key] = (value - spec.offset) / spec.scale

    def value(self, tag: str) -> float:
        line, spec = self._tag(tag)
        return line.raw[spec.key] * spec.scale + spec.offset

    def _line(self, bus_id: str) -> _Line:
        try:
            return self._lines[bus_id]
        except KeyError:
            raise KeyError(f"unknown serial bus {bus_id!r}") from None

    # -- faults ------------------------------------------------------------------------

    def pull_cable(self, bus_id: str) -> None:
        line = self._line(bus_id)
        line.plugged = False
        self._unplug(line)

    def plug_cable(self, bus_id: str) -> None:
        line = self._line(bus_id)
        line.plugged = True
        if line.master is None:
            self._plug(line)

    def set_garbled(self, bus_id: str, every: int) -> None:
        """Damage every ``every``-th line (0: none)."""
        self._line(bus_id).garble_every = max(0, every)

    def set_slow(self, bus_id: str, delay_s: float) -> None:
        """Send a line at most every ``delay_s`` (0: every ``interval_s`` again)."""
        self._line(bus_id).slow_s = max(0.0, delay_s)

    def set_silent(self, bus_id: str, silent: bool) -> None:
        self._line(bus_id).silent = silent

    def garbled_sent(self, bus_id: str) -> int:
        return self._line(bus_id).garbled_sent
