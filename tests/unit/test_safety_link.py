"""The link between the gateway and its safety process: framing, garbage, bounded telemetry.

Real Unix socket pairs and asyncio streams, as the gateway uses them.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from device_drivers import Quality, Sample, SampleBlock
from edge.safety_link import (
    ChildMessage,
    FrameReader,
    Gap,
    LinkCorrupt,
    Notice,
    Record,
    Telemetry,
    frame,
    samples_of,
)
from edge.safety_process import ChildLink


async def _pair() -> tuple[asyncio.StreamWriter, FrameReader, asyncio.StreamWriter]:
    """(the sending end's writer, the receiving end's frames, the receiving end's writer,
    which must stay referenced: collecting it closes that end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _, writer = await asyncio.open_unix_connection(sock=a)
    reader, theirs = await asyncio.open_unix_connection(sock=b)
    return writer, FrameReader(reader, ChildMessage), theirs


def _record(i: int) -> Record:
    return Record(f"T{i}", "normal", "cut", 1.6, 1.5, "above_cut", i, "", ["power"], "ch4", False)


async def test_garbage_frames_are_counted_and_skipped_nothing_valid_lost() -> None:
    writer, frames, _keep = await _pair()
    for i in range(5):
        writer.write(frame(_record(i)))
        writer.write(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # a frame whose body is no message
    writer.write(frame(Notice("T9", "lockout_test_overdue", "late", "alarm")))
    writer.write(b"\x00\x00\x00\x02\x91\x01")  # an array whose tag is no message type
    writer.close()
    got = []
    while (message := await frames.read()) is not None:
        got.append(message)
    assert [m.tag for m in got] == ["T0", "T1", "T2", "T3", "T4", "T9"]  # in order, once each
    assert got[0] == _record(0)
    assert frames.garbage == 6


@pytest.mark.parametrize(
    "tail",
    [b"\xff\xff\xff\xff", b"\x00\x00\x00\x10short", b"\x00\x00"],
    ids=["length-beyond-limit", "ends-inside-a-frame", "ends-inside-a-header"],
)
async def test_a_stream_that_cannot_be_framed_is_corrupt(tail: bytes) -> None:
    writer, frames, _keep = await _pair()
    writer.write(frame(_record(1)) + tail)
    writer.close()
    assert await frames.read() == _record(1)
    with pytest.raises(LinkCorrupt):
        await frames.read()


async def test_telemetry_keeps_decision_order_with_records() -> None:
    writer, frames, _keep = await _pair()
    link = ChildLink()
    link.attach(writer)
    a = Sample("A", "d", 1.0, Quality.GOOD, 1)
    link.put_nowait(a)
    link.send(_record(2))  # the sample read before the decision goes first
    link.put_block(SampleBlock(("B", "C"), "d", [2.0, 3.0], [3, 4]))
    await asyncio.sleep(0)  # telemetry goes once per loop turn
    await asyncio.sleep(0)
    writer.close()
    got = []
    while (message := await frames.read()) is not None:
        got.append(message)
    assert isinstance(got[0], Telemetry) and samples_of(got[0]) == [a]
    assert got[1] == _record(2)
    assert isinstance(got[2], Telemetry)
    assert [(s.tag, s.value) for s in samples_of(got[2])] == [("B", 2.0), ("C", 3.0)]


async def test_a_full_link_drops_telemetry_with_a_gap_marker_but_never_records() -> None:
    writer, frames, theirs = await _pair()
    link = ChildLink(telemetry_limit=64 * 1024)
    link.attach(writer)
    sample = Sample("A", "d", 1.0, Quality.GOOD, 1)
    # the gateway does not read: the kernel's buffer and then the transport's fill up
    sent = 0
    while link.dropped == 0:
        for _ in range(500):
            link.put_nowait(sample)
            sent += 1
        await asyncio.sleep(0)
    for _ in range(100):
        link.put_nowait(sample)
        sent += 1
    link.send(_record(7))  # a record is never dropped for telemetry
    got_samples, gaps, records = 0, 0, []
    while True:
        message = await asyncio.wait_for(frames.read(), 10)
        if isinstance(message, Telemetry):
            got_samples += len(message.samples)
        elif isinstance(message, Gap):
            gaps += message.samples
        elif isinstance(message, Record):
            records.append(message)
            if link.pending_bytes() == 0 and not link._rows:
                break
        if records and got_samples + gaps == sent:
            break
    if got_samples + gaps < sent:  # the gap is reported ahead of the next telemetry
        link.put_nowait(sample)
        sent += 1
        while got_samples + gaps < sent:
            message = await asyncio.wait_for(frames.read(), 10)
            if isinstance(message, Telemetry):
                got_samples += len(message.samples)
            elif isinstance(message, Gap):
                gaps += message.samples
    assert records == [_record(7)]
    assert gaps == link.dropped > 0
    assert got_samples + gaps == sent  # every sample arrived or is counted in a gap
    theirs.close()
