"""Serial line formats: hypothesis round-trips for every parser, damaged lines refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_drivers import DeviceSpec, PointSpec, Quality
from device_drivers.serial import (
    ChecksumError,
    GarbledLine,
    LineError,
    LineFormat,
    SerialLineDriver,
    SerialLink,
    SerialPoint,
    format_line,
    nmea_checksum,
    parse_line,
)

keys = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True)
values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
units = st.sampled_from(["", "%", "ppm", "mg/m3", "mm", "m/s", "C"])


@given(st.dictionaries(keys, values, min_size=1, max_size=8), units)
def test_kv_round_trips(pairs: dict[str, float], unit: str) -> None:
    line = format_line(pairs, LineFormat.KV, dict.fromkeys(pairs, unit))
    assert line.endswith(b"\r\n")
    assert parse_line(line[:-1], LineFormat.KV) == pairs


@given(st.dictionaries(keys, values, min_size=1, max_size=8))
def test_kv_xor_round_trips(pairs: dict[str, float]) -> None:
    line = format_line(pairs, LineFormat.KV_XOR)
    assert line.startswith(b"$")
    assert parse_line(line.rstrip(b"\n"), LineFormat.KV_XOR) == pairs


@given(st.lists(values, min_size=1, max_size=12))
def test_csv_round_trips(columns: list[float]) -> None:
    pairs = {str(i): v for i, v in enumerate(columns)}
    assert parse_line(format_line(pairs, LineFormat.CSV).rstrip(b"\n"), LineFormat.CSV) == pairs


@given(st.dictionaries(keys, values, min_size=1, max_size=4), st.integers(0, 255))
def test_any_single_byte_change_in_a_checksummed_line_is_refused(
    pairs: dict[str, float], flip: int
) -> None:
    line = bytearray(format_line(pairs, LineFormat.KV_XOR).rstrip(b"\r\n"))
    position = 1 + flip % (len(line) - 4)  # inside the payload
    original = line[position]
    line[position] = original ^ (1 + flip % 127)
    with pytest.raises(LineError):
        assert parse_line(bytes(line), LineFormat.KV_XOR) != pairs


@given(st.binary(max_size=200))
def test_noise_never_raises_anything_but_a_line_error(noise: bytes) -> None:
    for fmt in LineFormat:
        with contextlib.suppress(LineError):
            parse_line(noise, fmt)


def test_known_lines() -> None:
    assert parse_line(b"CH4=0.85%", LineFormat.KV) == {"CH4": 0.85}
    assert parse_line(b"CH4=0.85%;CO=12ppm\r", LineFormat.KV) == {"CH4": 0.85, "CO": 12.0}
    payload = b"CH4=1.20%,O2=20.9%"
    line = b"$" + payload + f"*{nmea_checksum(payload):02X}".encode()
    assert parse_line(line, LineFormat.KV_XOR) == {"CH4": 1.2, "O2": 20.9}
    with pytest.raises(ChecksumError):
        parse_line(line[:-2] + b"00", LineFormat.KV_XOR)
    for bad in (b"CH4:0.85", b"CH4=abc", b"=1", b"", b"\x00CH4=1", "CH4=1°".encode()):
        with pytest.raises(GarbledLine):
            parse_line(bad, LineFormat.KV)


async def test_driver_feed_counts_garbage_and_keeps_good_values() -> None:
    drv = SerialLineDriver("det", SerialLink("/dev/null-not-used"), LineFormat.KV_XOR, 10.0)
    payload = b"CH4=0.50"
    good = b"$" + payload + f"*{nmea_checksum(payload):02X}\r\n".encode()
    drv.feed(good[:5])  # a line split across reads
    drv.feed(good[5:] + b"$CH4=9.99*00\r\n" + b"\xff\xfe garbage\n" + b"x" * 600)
    assert (drv.lines, drv.checksum_errors, drv.garbled_lines) == (1, 1, 3)
    drv._port = object()  # pretend open: read from what was fed
    spec = DeviceSpec("d", 1, (PointSpec("CH4", SerialPoint("CH4"), high=4.0),))
    (sample,) = await drv.read(drv.plan(spec))
    assert (sample.quality, sample.value) == (Quality.GOOD, 0.5)
    missing = DeviceSpec("d", 1, (PointSpec("CO", SerialPoint("CO")),))
    (sample,) = await drv.read(drv.plan(missing))
    assert (sample.quality, sample.reason) == (Quality.BAD, "decode")  # the last line was noise
    drv._port = None
