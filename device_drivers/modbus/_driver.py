"""Async Modbus driver: one object per bus, over TCP, RTU on a serial line, or RTU over TCP.

The three transports are one driver: :func:`make_client` builds the pymodbus
client for a :class:`ModbusLink` (a TCP client with the socket or RTU framer,
or a serial client with the RTU framer), as pymodbus itself builds clients
from a comm type and a framer. Everything above the client (timeouts, error
translation, planning, decoding, write verification) is shared.

Time limits are ours, not pymodbus's: every call runs under
``asyncio.timeout()`` and pymodbus is built with ``retries=0``, no automatic
reconnect and a longer internal timeout so it never fires first.

Cancellation. On Python 3.11, ``asyncio.wait_for`` inside pymodbus swallows a
cancel that lands together with the answer. Each request therefore runs in
its own task that we await through :func:`asyncio.shield`: a cancel of the
caller (shutdown, our timeout) always reaches the caller, and the request
task is cancelled behind it.

Malformed answers. A response pymodbus cannot decode (short or over-long
PDU) raises inside the protocol's ``data_received``, which would make asyncio
close the connection every device of the bus shares. :func:`_guard_framing`
catches it there, drops the garbage and fails only the waiting request, with
:class:`DecodeError`.

Late answers (TCP). pymodbus stamps every request with a fresh MBAP
transaction id and skips a frame whose transaction id or unit is not the
outstanding request's, so an answer arriving after our timeout is dropped.
We keep the connection after a timeout (a dead unit must not cost its
bus-mates a reconnect); ``test_late_answer_is_never_taken_for_the_next_request``
holds pymodbus to it. On an RTU line there is no transaction id: after a
timeout we wait one inter-frame gap and flush the receive buffer.

Register reads (the hot path) skip pymodbus's transaction layer. pymodbus's
client builds a request object, runs it under ``asyncio.wait_for`` inside a
task of its own (which our shield wraps in another), decodes the answer
register by register into a response object and formats it for a debug log
it does not write: six event-loop turns and about 100 us of Python a read.
:meth:`ModbusDriver.read_registers` and :meth:`ModbusDriver.read` instead
send the 5-byte read PDU framed by pymodbus's own framer (MBAP or RTU with
CRC, the transaction id from pymodbus's counter, under its request lock) on
its connection, and take the answer's frame in the protocol's
``callback_data`` with pymodbus's own frame decoder, matched by unit and
transaction id exactly as pymodbus matches it; the PDU is checked here
(function code, exception answer, byte count) and its register bytes go to
the decoder as they arrived. One future, one timer, no extra task. Coils and
writes still go through pymodbus's client.

Reconnects are lazy: a call on a closed connection tries to connect once; if
that fails, further calls raise :class:`DeviceUnavailable` at once until a
capped, jittered exponential backoff has passed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType

from device_drivers._connection import LazyConnection
from device_drivers._driver import DeviceSpec, OutputSpec, ReadPlan
from device_drivers._errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnavailable,
    FrameError,
    WriteMismatch,
)
from device_drivers._logs import limit_library_logs
from device_drivers._sample import Sample, SampleBlock
from device_drivers._tty import line_parity
from device_drivers.modbus._plan import (
    MAX_READ_REGISTERS,
    ModbusCoil,
    ModbusPlan,
    decode_columns,
    plan_reads,
)

__all__ = [
    "ModbusDriver",
    "ModbusLink",
    "ModbusSerialLink",
    "ModbusTcpDriver",
    "ModbusTcpLink",
    "inter_frame_gap_s",
    "make_client",
]

log = logging.getLogger("safewatch.device_drivers.modbus")

_MAX_READ_COILS = 2000
_READ_FUNCTION = {"holding": 3, "input": 4}
_READ_PDU = struct.Struct(">BHH")  # function code, first register, count

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


@dataclass(frozen=True, slots=True)
class ModbusTcpLink:
    """A TCP endpoint. ``rtu_framing``: RTU frames over TCP (a serial device server)."""

    host: str
    port: int
    rtu_framing: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}{' (RTU over TCP)' if self.rtu_framing else ''}"


@dataclass(frozen=True, slots=True)
class ModbusSerialLink:
    """An RS-485/RS-232 line driven with RTU framing."""

    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    inter_frame_s: float | None = None  # None: 3.5 characters at the baud rate

    def __str__(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    @property
    def char_bits(self) -> int:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def gap_s(self) -> float:
        if self.inter_frame_s is not None:
            return self.inter_frame_s
        return inter_frame_gap_s(self.baudrate, self.char_bits)


ModbusLink = ModbusTcpLink | ModbusSerialLink


def inter_frame_gap_s(baudrate: int, char_bits: int = 11) -> float:
    """Silent interval between RTU frames: 3.5 characters, fixed 1.75 ms above 19,200 baud
    (Modbus over serial line spec, 2.5.1.1)."""
    if baudrate > 19_200:
        return 0.00175
    return 3.5 * char_bits / baudrate


def make_client(
    link: ModbusLink, *, name: str, timeout_s: float, trace_connect: Callable[[bool], None]
) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    """The pymodbus client for ``link``: the one place the transports differ."""
    # pymodbus's own timeout is longer than ours, so asyncio.timeout() always decides.
    common: dict[str, Any] = {
        "name": name,
        "timeout": timeout_s * 2 + 1.0,
        "retries": 0,
        "reconnect_delay": 0,  # no background reconnect task: we reconnect lazily
        "trace_connect": trace_connect,
    }
    if isinstance(link, ModbusTcpLink):
        framer = FramerType.RTU if link.rtu_framing else FramerType.SOCKET
        return AsyncModbusTcpClient(link.host, port=link.port, framer=framer, **common)
    return AsyncModbusSerialClient(
        link.port,
        framer=FramerType.RTU,
        baudrate=link.baudrate,
        bytesize=link.bytesize,
        parity=line_parity(link.port, link.parity),
        stopbits=link.stopbits,
        **common,
    )


class _Malformed(ModbusException):
    """A frame that pymodbus could not decode (carried to the waiting request)."""


class _BadCrc(ModbusException):
    """An RTU frame failed its CRC (carried to the waiting request)."""


def _guard_framing(
    client: Any, on_garbage: Callable[[str], None], on_bad_crc: Callable[[], None]
) -> Callable[[bytes, tuple[Any, ...] | None], int] | None:
    """Make an undecodable frame fail the waiting request instead of the connection,
    and a frame with a bad CRC fail it at once (counted) instead of at its timeout.

    Returns the guarded ``callback_data`` (pymodbus's own request path), or None
    when this pymodbus has no such hook."""
    ctx = getattr(client, "ctx", None)
    original = getattr(ctx, "callback_data", None)
    if ctx is None or original is None:  # pragma: no cover - a future pymodbus
        return None
    framer = getattr(ctx, "framer", None)
    if isinstance(framer, FramerRTU):
        decode = framer.decode

        def checked(data: bytes) -> tuple[int, int, int, bytes]:
            used, dev_id, tid, frame = decode(data)
            # pymodbus drops a frame that fails its CRC: consumed bytes, no frame
            if used and not frame and len(data) >= FramerRTU.MIN_SIZE:
                on_bad_crc()
                future = getattr(ctx, "response_future", None)
                if isinstance(future, asyncio.Future) and not future.done():
                    future.set_exception(_BadCrc("frame failed its CRC check"))
            return used, dev_id, tid, frame

        framer.decode = checked  # type: ignore[method-assign]

    def guarded(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        try:
            used: int = original(data, addr)
        except (ModbusException, ValueError, IndexError, struct.error) as exc:
            on_garbage(str(exc))
            future = getattr(ctx, "response_future", None)
            if isinstance(future, asyncio.Future) and not future.done():
                future.set_exception(_Malformed(f"malformed response: {exc}"))
            return len(data)  # drop what we cannot frame
        return used

    ctx.callback_data = guarded
    return guarded


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class ModbusDriver(LazyConnection):
    """Modbus client for one bus, with our timeouts, error tree, plan and decoding.

    Implements :class:`device_drivers.DeviceDriver`. Errors (all
    :class:`device_drivers.DriverError`, cause kept):

    - :class:`DeviceTimeout`: no answer within the timeout;
    - :class:`DeviceUnavailable`: cannot connect, connection lost, or backing off;
    - :class:`DeviceException`: the device answered with a Modbus exception;
    - :class:`DecodeError`: the answer is malformed or has the wrong number of values;
    - :class:`WriteMismatch`: a written coil reads back different.

    ``decode_errors`` and ``timeouts`` count failures for health reporting.
    """

    def __init__(
        self,
        name: str,
        link: ModbusLink,
        timeout_s: float,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        super().__init__(
            name, str(link), backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
        # pymodbus logs every bad frame, with hex dumps: one line, a few per minute
        limit_library_logs("pymodbus.logging", "pymodbus")
        self.link = link
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._in_flight = False  # a request is waiting for its answer
        self._gap_s = link.gap_s if isinstance(link, ModbusSerialLink) else 0.0
        self._quiet_from = 0.0  # monotonic time the line was last busy (RTU gap)
        self._answered_at = 0.0  # when the waiting lean read's answer frame was complete
        self.garbage_frames = 0
        self.crc_errors = 0
        # read() goes through read_registers only where a subclass replaced it (a fake
        # at the register seam); else straight to the answer's bytes
        self._registers_seam = type(self).read_registers is not ModbusDriver.read_registers
        # the lean read path: (pymodbus's transaction manager, its framer) of the open client
        self._lean: tuple[Any, Any] | None = None
        self._pending: tuple[asyncio.Future[bytes], int, int] | None = None  # (answer, unit, tid)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.link})"

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    # -- connection (open(), backoff: LazyConnection) -----------------------------------

    connect = LazyConnection.open  # the register-level API's name

    async def close(self) -> None:
        """Close the connection; a later call reconnects."""
        client, self._client = self._client, None
        self._lean = None
        if client is not None:
            client.close()

    async def _connect(self) -> None:
        await self.close()
        client = make_client(
            self.link,
            name=self.name,
            timeout_s=self.timeout_s,
            trace_connect=lambda up: None if up else self._lost(client),
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except TimeoutError as exc:
            client.close()
            raise DeviceUnavailable(self.name, f"connect to {self.link} timed out") from exc
        except OSError as exc:
            client.close()
            raise DeviceUnavailable(self.name, f"cannot connect to {self.link}: {exc}") from exc
        if not ok:
            client.close()
            # pymodbus logs and swallows the OSError; keep a library exception as the cause
            raise DeviceUnavailable(
                self.name, f"cannot connect to {self.link} (refused or unreachable)"
            ) from ConnectionException(f"connect to {self.link} failed")
        guarded = _guard_framing(client, self._garbage, self._bad_crc)
        self._install_lean(client, guarded)
        self._client = client

    def _garbage(self, what: str) -> None:
        self.garbage_frames += 1

    def _bad_crc(self) -> None:
        self.crc_errors += 1

    def _lost(self, client: Any) -> None:
        """The peer closed the connection: fail a waiting request now, not at its timeout."""
        if not self._in_flight or client is not self._client:
            return
        pending = self._pending
        if pending is not None:  # a lean read waits; pymodbus's own future is nobody's
            if not pending[0].done():
                pending[0].set_exception(ConnectionException("connection closed by the peer"))
            return
        future = getattr(getattr(client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(ConnectionException("connection closed by the peer"))

    async def _ready_client(self, device: str) -> Any:
        client = self._client
        if client is None or not client.connected:
            await self.ensure_open(device)
            client = self._client
        return client

    # -- the lean read path ------------------------------------------------------------

    def _install_lean(
        self, client: Any, guarded: Callable[[bytes, tuple[Any, ...] | None], int] | None
    ) -> None:
        """Route answers to a lean read to it; everything else to pymodbus (``guarded``)."""
        ctx: Any = getattr(client, "ctx", None)
        framer = getattr(ctx, "framer", None)
        if ctx is None or guarded is None or framer is None or not hasattr(ctx, "getNextTID"):
            self._lean = None  # pragma: no cover - a future pymodbus: its own path only
            return
        # the framer's own decode: the RTU one is wrapped for pymodbus's path (_guard_framing)
        decode = type(framer).decode.__get__(framer)
        rtu = isinstance(framer, FramerRTU)

        def on_data(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
            pending = self._pending
            if pending is None:
                return guarded(data, addr)
            return self._take_frame(pending, decode, rtu, data)

        ctx.callback_data = on_data
        self._lean = (ctx, framer)

    def _take_frame(
        self,
        pending: tuple[asyncio.Future[bytes], int, int],
        decode: Callable[[bytes], tuple[int, int, int, bytes]],
        rtu: bool,
        data: bytes,
    ) -> int:
        """Frames in ``data`` -> the waiting read's PDU; returns the bytes used. A frame of
        another unit or transaction (a late answer) is skipped, as pymodbus skips it."""
        future, unit, tid = pending
        used = 0
        total = len(data)
        while used < total:
            try:
                size, dev_id, got_tid, pdu = decode(data[used:] if used else data)
            except (ModbusException, ValueError, IndexError, struct.error) as exc:
                self._garbage(str(exc))
                if not future.done():
                    future.set_exception(_Malformed(f"malformed response: {exc}"))
                return total  # drop what we cannot frame
            if not size:
                break  # an incomplete frame: wait for more bytes
            used += size
            if not pdu:
                if rtu:  # pymodbus's RTU decoder drops a frame that fails its CRC
                    self._bad_crc()
                    if not future.done():
                        future.set_exception(_BadCrc("frame failed its CRC check"))
                else:
                    self._garbage("frame without a PDU")
                    if not future.done():
                        future.set_exception(_Malformed("malformed response: no PDU"))
                continue
            if unit and dev_id != unit:
                continue
            if tid and got_tid and got_tid != tid:
                continue
            if not future.done():
                future.set_result(pdu)
                # the line went quiet when the answer's last byte came, not when we are
                # done with it: the next request's silent interval counts from here
                self._answered_at = time.monotonic()
            break
        return used

    async def _read_pdu(
        self,
        device: str,
        what: str,
        unit: int,
        function: int,
        address: int,
        count: int,
        timeout_s: float | None,
    ) -> bytes:
        """Send one read request on the lean path; the answer's register bytes."""
        client = self._client
        if client is None or not client.connected:
            client = await self._ready_client(device)
        lean = self._lean
        if lean is None:  # pragma: no cover - a pymodbus without the hooks we use
            response = await self._call(
                device,
                what,
                lambda c: (
                    c.read_holding_registers(address, count=count, device_id=unit)
                    if function == 3
                    else c.read_input_registers(address, count=count, device_id=unit)
                ),
                timeout_s,
            )
            return struct.pack(f">{len(response.registers)}H", *response.registers)
        ctx, framer = lean
        timeout = self.timeout_s if timeout_s is None else timeout_s
        async with ctx._lock:  # one request at a time, pymodbus's own requests included
            if self._gap_s:
                quiet = self._quiet_from + self._gap_s - time.monotonic()
                if quiet > 0:
                    await asyncio.sleep(quiet)
            transport = ctx.transport
            if transport is None or self._lean is not lean:
                await self.close()
                raise DeviceUnavailable(device, f"connection lost before {what}")
            loop = asyncio.get_running_loop()
            future: asyncio.Future[bytes] = loop.create_future()
            tid = ctx.getNextTID()
            frame = framer.encode(_READ_PDU.pack(function, address, count), unit, tid)
            self._pending = (future, unit, tid)
            self._answered_at = 0.0
            self._in_flight = True
            ctx.recv_buffer = b""  # what is left of an earlier answer is not this one's
            timer = loop.call_later(timeout, _expire, future)
            try:
                transport.write(frame)
                pdu = await future
            except TimeoutError as exc:
                if not client.connected:
                    await self.close()
                    raise DeviceUnavailable(device, f"connection lost during {what}") from exc
                raise DeviceTimeout(device, f"no answer to {what} within {timeout} s") from exc
            except _Malformed as exc:
                raise DecodeError(device, f"{what}: {exc}") from exc
            except _BadCrc as exc:
                raise FrameError(device, f"{what}: answer failed its CRC check") from exc
            except ConnectionException as exc:
                await self.close()
                raise DeviceUnavailable(device, f"connection lost during {what}: {exc}") from exc
            except OSError as exc:
                await self.close()
                raise DeviceUnavailable(device, f"connection error during {what}: {exc}") from exc
            finally:
                timer.cancel()
                self._pending = None
                self._in_flight = False
                if self._gap_s:
                    self._quiet_from = self._answered_at or time.monotonic()
        return self._registers_of(device, what, pdu, function, count)

    def _registers_of(self, device: str, what: str, pdu: bytes, function: int, count: int) -> bytes:
        """Check a read answer's PDU as pymodbus's response decoder does; its register bytes."""
        code = pdu[0]
        if code != function:
            if code == function | 0x80:
                exception = pdu[1] if len(pdu) > 1 else 0
                text = _EXCEPTION_NAMES.get(exception, "unknown exception")
                raise DeviceException(device, f"{what} refused: exception {exception} ({text})")
            self._garbage(f"function code {code}")
            raise DecodeError(device, f"{what}: malformed response: function code {code}")
        byte_count = pdu[1] if len(pdu) > 1 else 0
        if len(pdu) < 2 or byte_count > len(pdu) - 2 or byte_count % 2:
            self._garbage(f"byte count {byte_count}")
            raise DecodeError(
                device,
                f"{what}: malformed response: byte_count {byte_count} "
                f"for a PDU of {len(pdu)} byte(s)",
            )
        if byte_count != 2 * count:
            raise DecodeError(device, f"{what}: got {byte_count // 2} register(s)")
        return pdu[2 : 2 + byte_count]

    # -- requests --------------------------------------------------------------------

    async def _call(
        self,
        device: str,
        what: str,
        request: Callable[[Any], Awaitable[Any]],
        timeout_s: float | None = None,
    ) -> Any:
        client = await self._ready_client(device)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self._gap_s:
            quiet = self._quiet_from + self._gap_s - time.monotonic()
            if quiet > 0:
                await asyncio.sleep(quiet)
        self._in_flight = True
        task = asyncio.ensure_future(request(client))
        try:
            async with asyncio.timeout(timeout):
                response = await asyncio.shield(task)
        except TimeoutError as exc:
            if not client.connected:
                await self.close()
                raise DeviceUnavailable(device, f"connection lost during {what}") from exc
            raise DeviceTimeout(device, f"no answer to {what} within {timeout} s") from exc
        except _Malformed as exc:
            raise DecodeError(device, f"{what}: {exc}") from exc
        except _BadCrc as exc:
            raise FrameError(device, f"{what}: answer failed its CRC check") from exc
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
            if not task.done():
                task.cancel()
                task.add_done_callback(_consume)
            if self._gap_s:
                self._quiet_from = time.monotonic()
        if response is None:  # pragma: no cover - only with no_response_expected
            raise DeviceTimeout(device, f"no answer to {what}")
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            text = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceException(device, f"{what} refused: exception {code} ({text})")
        return response

    def _device(self, unit: int, device: str | None) -> str:
        return device or f"{self.name} unit {unit}"

    # -- register-level API ----------------------------------------------------------

    async def read_registers(
        self,
        unit: int,
        table: Literal["holding", "input"],
        address: int,
        count: int,
        *,
        device: str | None = None,
        timeout_s: float | None = None,
    ) -> list[int]:
        """Read ``count`` holding or input registers starting at ``address``.

        ``device`` names the device in errors (default: ``"<bus> unit <unit>"``).
        """
        data = await self._read_table(unit, table, address, count, device, timeout_s)
        return list(struct.unpack(f">{count}H", data))

    async def _read_table(
        self,
        unit: int,
        table: str,
        address: int,
        count: int,
        device: str | None,
        timeout_s: float | None,
    ) -> bytes:
        _check(unit, address, count, MAX_READ_REGISTERS)
        function = _READ_FUNCTION.get(table)
        if function is None:
            raise ValueError(f"unknown register table {table!r}")
        name = self._device(unit, device)
        what = f"read {table} {address}+{count}"
        return await self._read_pdu(name, what, unit, function, address, count, timeout_s)

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

    # -- DeviceDriver ----------------------------------------------------------------

    def plan(self, device: DeviceSpec) -> ModbusPlan:
        return plan_reads(device)

    async def read(self, plan: ReadPlan, *, timeout_s: float | None = None) -> Sequence[Sample]:
        """Read every block of the plan; the values come back as one :class:`SampleBlock`
        (columns decoded block by block, no object per GOOD value)."""
        if not isinstance(plan, ModbusPlan):
            raise TypeError(f"{self.name}: not a Modbus plan: {plan!r}")
        device = plan.device
        n = len(device.points)
        values: list[float] = [math.nan] * n
        stamps: list[int] = [0] * n
        odd: dict[int, Sample] = {}
        registers_seam = self._registers_seam
        for block in plan.blocks:
            data: bytes | list[int]
            if registers_seam:  # a subclass reads registers its own way (a fake bus)
                data = await self.read_registers(
                    plan.unit,
                    block.table,
                    block.address,
                    block.count,
                    device=device.id,
                    timeout_s=timeout_s,
                )
            else:
                data = await self._read_table(
                    plan.unit, block.table, block.address, block.count, device.id, timeout_s
                )
            decode_columns(block, data, device.id, time.time_ns(), values, stamps, odd)
        # every point sits in exactly one block
        return SampleBlock(plan.tags, device.id, values, stamps, odd)

    async def write(self, device: DeviceSpec, output: OutputSpec, value: bool) -> bool:
        address = output.address
        unit = device.address
        if not isinstance(address, ModbusCoil) or not isinstance(unit, int):
            raise TypeError(f"{self.name}: output {output.id} is not a Modbus coil")
        await self.write_coil(unit, address.coil, value, device=device.id)
        if not output.verify:
            return False
        try:
            (back,) = await self.read_coils(unit, address.coil, 1, device=device.id)
        except DeviceException:
            return False  # the device does not let coils be read back
        if back != value:
            raise WriteMismatch(
                device.id, f"coil {address.coil} written {value} but reads back {back}"
            )
        return True


class ModbusTcpDriver(ModbusDriver):
    """A :class:`ModbusDriver` on one Modbus TCP endpoint (the common case)."""

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
        super().__init__(
            name,
            ModbusTcpLink(host, port),
            timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        self.host = host
        self.port = port


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned request's outcome so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def _check(unit: int, address: int, count: int, max_count: int) -> None:
    if not 0 <= unit <= 255:
        raise ValueError(f"unit {unit} is not 0..255")
    if not 1 <= count <= max_count:
        raise ValueError(f"count {count} is not 1..{max_count}")
    if not address >= 0 or address + count > 65536:
        raise ValueError(f"address {address}+{count} is outside 0..65535")
