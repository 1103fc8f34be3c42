"""Text line protocols of serial gas detectors: framing, checksum, parser. Pure, no I/O.

A line is the bytes between two ``\\n`` (a trailing ``\\r`` is dropped). Each
:class:`LineFormat` turns one line into ``{key: value}`` and back:

``kv``
    ``CH4=0.85%;CO=12ppm`` (also ``,`` or spaces between pairs). A number may
    carry a unit suffix, which is ignored. No checksum.
``kv_xor``
    ``$CH4=0.85%,CO=12ppm*5A``: the NMEA 0183 framing: the payload between
    ``$`` and ``*`` with a two-digit hex XOR of its bytes. A line whose
    checksum is wrong is refused whole (``FrameError``, reason ``crc``).
``csv``
    ``0.85,12,20.9``: positional values; a tag's ``key`` is the column (``0``,
    ``1``...).

:func:`parse_line` raises :class:`LineError` subclasses; the driver counts
them and turns them into a reason on the samples, never into a stopped loop.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping

__all__ = [
    "ChecksumError",
    "GarbledLine",
    "LineError",
    "LineFormat",
    "format_line",
    "nmea_checksum",
    "parse_line",
]

MAX_LINE = 512  # longer lines are garbage (a detector's line is < 100 bytes)


class LineFormat(enum.StrEnum):
    KV = "kv"
    KV_XOR = "kv_xor"
    CSV = "csv"


class LineError(ValueError):
    """A line could not be used; ``reason`` is the quality reason it leaves."""

    reason = "decode"


class GarbledLine(LineError):
    """Not a line of this format (noise, a cut-off line, wrong baud rate)."""

    reason = "decode"


class ChecksumError(LineError):
    """The line's checksum does not match its payload."""

    reason = "crc"


_NUMBER = re.compile(
    r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"  # the number
    r"\s*(?:[A-Za-z%/][A-Za-z0-9%/.]*)?\s*$"  # an optional unit: %, ppm, mg/m3
)
_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
_PAIR_SPLIT = re.compile(r"[;, \t]+")


def nmea_checksum(payload: bytes) -> int:
    value = 0
    for byte in payload:
        value ^= byte
    return value


def _number(text: str, line: bytes) -> float:
    match = _NUMBER.match(text)
    if match is None:
        raise GarbledLine(f"{text!r} is not a number in {line!r}")
    value = float(match.group(1))
    if not math.isfinite(value):
        raise GarbledLine(f"{text!r} is not a finite number in {line!r}")
    return value


def _pairs(payload: str, line: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in _PAIR_SPLIT.split(payload.strip()):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key):
            raise GarbledLine(f"{item!r} is not KEY=VALUE in {line!r}")
        out[key] = _number(value, line)
    if not out:
        raise GarbledLine(f"no KEY=VALUE pair in {line!r}")
    return out


def parse_line(line: bytes, fmt: LineFormat) -> dict[str, float]:
    """One line (without its ``\\n``) -> ``{key: value}``; raises :class:`LineError`."""
    if len(line) > MAX_LINE:
        raise GarbledLine(f"line of {len(line)} bytes is over {MAX_LINE}")
    raw = line.rstrip(b"\r")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise GarbledLine(f"non-ASCII bytes in {raw[:40]!r}") from exc
    if any(ord(c) < 0x20 and c != "\t" for c in text):
        raise GarbledLine(f"control characters in {raw[:40]!r}")
    if fmt is LineFormat.KV:
        return _pairs(text, raw)
    if fmt is LineFormat.KV_XOR:
        if not text.startswith("$") or len(text) < 4 or text[-3] != "*":
            raise GarbledLine(f"not a $...*XX frame: {raw[:40]!r}")
        payload = raw[1:-3]
        try:
            expected = int(text[-2:], 16)
        except ValueError as exc:
            raise GarbledLine(f"checksum {text[-2:]!r} is not hex in {raw[:40]!r}") from exc
        actual = nmea_checksum(payload)
        if actual != expected:
            raise ChecksumError(f"checksum {expected:02X} but payload gives {actual:02X}")
        return _pairs(payload.decode("ascii"), raw)
    values = [v for v in text.split(",")]
    if not text.strip():
        raise GarbledLine("empty line")
    return {str(i): _number(v, raw) for i, v in enumerate(values)}


def _text(value: float) -> str:
    return repr(float(value))


def format_line(
    values: Mapping[str, float], fmt: LineFormat, units: Mapping[str, str] | None = None
) -> bytes:
    """``{key: value}`` -> one line with ``\\r\\n`` (what a detector would send)."""
    units = units or {}
    if fmt is LineFormat.CSV:
        keys = sorted(values, key=int)
        if keys != [str(i) for i in range(len(keys))]:
            raise ValueError("csv keys must be 0..n-1")
        return (",".join(_text(values[k]) for k in keys) + "\r\n").encode("ascii")
    body = ";".join(f"{k}={_text(v)}{units.get(k, '')}" for k, v in values.items())
    if fmt is LineFormat.KV:
        return (body + "\r\n").encode("ascii")
    payload = body.replace(";", ",").encode("ascii")
    return b"$" + payload + f"*{nmea_checksum(payload):02X}\r\n".encode("ascii")
