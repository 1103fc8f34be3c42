"""A virtual RS-485 line: two pseudo-terminals joined like a null-modem cable.

Each end is the slave side of its own pty, so both the gateway (pymodbus
serial client through pyserial) and the simulator's RTU server open an
ordinary tty path; no socat, no hardware. Bytes written at one end come out
of the other, paced at the line's baud rate when ``baudrate`` is given (a pty
itself moves bytes as fast as memory), so a benchmark sees a real line's
throughput: ``char_bits / baudrate`` seconds a character, one direction at a
time (half duplex, as RS-485).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path

__all__ = ["NullModem"]


class NullModem:
    """Join two fresh ptys; :attr:`a` and :attr:`b` are the tty paths of the two ends.

    ``link_a``: also make a symlink to end ``a`` at this path (the port a site file
    names), when nothing but a symlink is there.
    """

    def __init__(
        self, *, baudrate: int | None = None, char_bits: int = 11, link_a: str | None = None
    ) -> None:
        self.baudrate = baudrate
        self.char_s = char_bits / baudrate if baudrate else 0.0
        self.link_a = Path(link_a) if link_a else None
        self._fds: list[int] = []
        self._masters: tuple[int, int] = (-1, -1)
        self.a = self.b = ""
        self.bytes_moved = 0
        self._line_free_at = 0.0  # half duplex: one frame on the wire at a time
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ma, sa = os.openpty()
        mb, sb = os.openpty()
        for fd in (sa, sb):
            tty.setraw(fd)  # no echo, no line editing before pyserial configures the port
        self._fds = [ma, sa, mb, sb]
        self._masters = (ma, mb)
        for fd in (ma, mb):
            os.set_blocking(fd, False)
        self.a, self.b = os.ttyname(sa), os.ttyname(sb)
        if self.link_a is not None:
            if self.link_a.is_symlink():
                self.link_a.unlink()
            if self.link_a.exists():
                raise FileExistsError(f"{self.link_a} exists and is not a symlink; not replaced")
            self.link_a.parent.mkdir(parents=True, exist_ok=True)  # var/sim/... in example sites
            self.link_a.symlink_to(self.a)
        self._tasks = [
            asyncio.create_task(self._pump(ma, mb), name="null-modem a->b"),
            asyncio.create_task(self._pump(mb, ma), name="null-modem b->a"),
        ]

    async def _pump(self, src: int, dst: int) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(src, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(src, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # the other side closed (EIO on a pty): wait for a reopen
                    await asyncio.sleep(0.01)
                    continue
                if not data:
                    continue
                if self.char_s:
                    now = loop.time()
                    done_at = max(now, self._line_free_at) + len(data) * self.char_s
                    self._line_free_at = done_at
                    await asyncio.sleep(done_at - now)
                self.bytes_moved += len(data)
                await _write_all(dst, data)
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(src)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self.link_a is not None and self.link_a.is_symlink():
            self.link_a.unlink()

    async def __aenter__(self) -> NullModem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        except OSError:
            return  # nobody has the other end open: the bytes are lost, as on a cut line
        view = view[written:]
