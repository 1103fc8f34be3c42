"""The link between the gateway and its safety process: messages and their framing.

The safety process (``edge/safety_process.py``) and the gateway's main process
talk over one Unix stream socket (a ``socketpair`` made by the gateway). Each
message is one frame: a 4-byte big-endian length, then the message encoded
with msgspec MessagePack as a tagged array (the first element names the type).

Safety process -> gateway, in decision order on one stream:

- :class:`Ready` once the safety process has restored its latched state and is
  about to poll (the gateway's start waits for it);
- :class:`Record` an alarm record of one rule transition (what
  ``AlarmManager.on_transition`` takes), :class:`Notice`, :class:`WriteFailed`,
  :class:`WriteRecovered`, :class:`Audit` (an engineer action to audit);
- :class:`Telemetry` the samples read and judged there (for the uplink and the
  models), :class:`Gap` samples dropped because the link was full;
- :class:`Stats` counters, bus and device health, conditions and react times.

Gateway -> safety process: :class:`Init` (first frame: the pickled start
specification, from our own parent process only), :class:`Command` (an engineer
command), :class:`Annunciate` (a horn or beacon from the alarm states) and
:class:`Stop`.

A frame longer than :data:`MAX_FRAME` means the stream is corrupt (no way to
find the next frame): :class:`LinkCorrupt`. A frame of the right shape that
does not decode is counted and skipped by the reader.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from device_drivers import Quality, Sample

__all__ = [
    "MAX_FRAME",
    "Annunciate",
    "Audit",
    "ChildMessage",
    "Command",
    "FrameReader",
    "Gap",
    "Init",
    "LinkCorrupt",
    "MainMessage",
    "Notice",
    "Ready",
    "Record",
    "Stats",
    "Stop",
    "Telemetry",
    "WriteFailed",
    "WriteRecovered",
    "frame",
    "sample_row",
    "samples_of",
]

MAX_FRAME = 16 * 1024 * 1024
_HEADER = 4

SampleRow = tuple[str, str, float | None, str, int, str | None]


class LinkCorrupt(Exception):
    """The byte stream cannot be framed any more (a length beyond :data:`MAX_FRAME`)."""


class Ready(msgspec.Struct, tag="ready", array_like=True):
    pid: int
    rules: list[str]
    buses: list[str]
    levels: dict[str, str]  # tag -> condition of its threshold rule (restored state)


class Record(msgspec.Struct, tag="record", array_like=True):
    tag: str
    previous: str
    level: str
    value: float | None
    threshold: float | None
    reason: str
    ts_ns: int
    rule: str
    commanded: list[str]
    kind: str
    calibration: bool


class Notice(msgspec.Struct, tag="notice", array_like=True):
    tag: str
    reason: str
    message: str
    level: str


class WriteFailed(msgspec.Struct, tag="write_failed", array_like=True):
    command: tuple[str, str, str, int, int, bool, bool]
    error: str
    ts_ns: int


class WriteRecovered(msgspec.Struct, tag="write_recovered", array_like=True):
    command: tuple[str, str, str, int, int, bool, bool]
    ts_ns: int


class Audit(msgspec.Struct, tag="audit", array_like=True):
    action: str
    actor: str
    target: str
    why: str


class Telemetry(msgspec.Struct, tag="telemetry", array_like=True):
    samples: list[SampleRow]


class Gap(msgspec.Struct, tag="gap", array_like=True):
    samples: int


class Stats(msgspec.Struct, tag="stats", array_like=True):
    counters: dict[str, int]
    buses: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    levels: dict[str, str]
    react_ms: list[float]  # new since the last Stats
    react_at: list[float]


class Init(msgspec.Struct, tag="init", array_like=True):
    spec: bytes  # pickle of edge.safety_process.ChildSpec


class Command(msgspec.Struct, tag="command", array_like=True):
    body: dict[str, Any]
    name: str


class Annunciate(msgspec.Struct, tag="annunciate", array_like=True):
    actuator: str
    on: bool


class Stop(msgspec.Struct, tag="stop", array_like=True):
    pass


ChildMessage = (
    Ready | Record | Notice | WriteFailed | WriteRecovered | Audit | Telemetry | Gap | Stats
)
MainMessage = Init | Command | Annunciate | Stop

_encoder = msgspec.msgpack.Encoder()


def frame(message: msgspec.Struct) -> bytes:
    """One message as a frame: length, then the MessagePack body."""
    body = _encoder.encode(message)
    return len(body).to_bytes(_HEADER, "big") + body


def sample_row(sample: Sample) -> SampleRow:
    return (
        sample.tag,
        sample.device,
        sample.value,
        sample.quality.value,
        sample.ts_ns,
        sample.reason,
    )


def samples_of(message: Telemetry) -> list[Sample]:
    """The samples of a telemetry message (an unknown quality reads as bad)."""
    out: list[Sample] = []
    for tag, device, value, quality, ts_ns, reason in message.samples:
        try:
            q = Quality(quality)
        except ValueError:
            q, reason = Quality.BAD, reason or "decode"
        out.append(Sample(tag, device, value, q, ts_ns, reason))
    return out


class FrameReader:
    """Reads frames of one message type from a stream; counts and skips undecodable ones."""

    def __init__(self, reader: asyncio.StreamReader, kind: Any) -> None:
        self.reader = reader
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind)
        self.garbage = 0

    async def read(self) -> Any:
        """The next decodable message; None at the end of the stream.

        Raises :class:`LinkCorrupt` when the stream cannot be framed any more.
        """
        while True:
            try:
                header = await self.reader.readexactly(_HEADER)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise LinkCorrupt(
                        f"stream ended inside a frame header ({exc.partial!r})"
                    ) from exc
                return None
            size = int.from_bytes(header, "big")
            if size > MAX_FRAME:
                raise LinkCorrupt(f"frame of {size} bytes (limit {MAX_FRAME}): not our framing")
            try:
                body = await self.reader.readexactly(size)
            except asyncio.IncompleteReadError as exc:
                raise LinkCorrupt(
                    f"stream ended inside a frame ({len(exc.partial)}/{size})"
                ) from exc
            try:
                return self.decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.garbage += 1
                continue
