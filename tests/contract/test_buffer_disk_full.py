"""The buffer on a real, full file system (a small tmpfs mounted by the test).

Measured fault this holds: with the disk full and the broker back, the
publisher resent the same messages thousands of times (the delete after PUBACK
failed and the rows came straight back), and points lost to the full disk left
no gap marker. Checked by sequence: every number is either a delivered message
or covered by a gap event, none twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import wire
from edge.uplink.buffer import BufferStorageError, StoreAndForwardBuffer
from tests.contract.test_publisher import make_publisher, running, subscribed
from tests.factories import alarm, point
from tests.support import Broker, async_wait_until

pytestmark = pytest.mark.contract

RESERVE = 512 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root, as the test machines run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (run as root): {done.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def open_buffer(disk: Path) -> StoreAndForwardBuffer:
    return StoreAndForwardBuffer(
        disk / "buf.db", 10**9, site="s1", gateway="gw1", reserve_bytes=RESERVE
    )


def fill(buf: StoreAndForwardBuffer, shed: int) -> tuple[list[int], int]:
    """Append 20-point batches until the full disk made the buffer shed ``shed`` old batches.

    Returns the stored sequence numbers and how many appends were refused.
    """
    stored: list[int] = []
    refused = 0
    for i in range(20_000):
        try:
            stored.append(buf.append_telemetry([point(value=i * 1e-3)] * 20).seq)
        except BufferStorageError as exc:
            assert exc.disk_full
            refused += 1
        if buf.dropped >= shed:
            return stored, refused
    raise AssertionError("the 2 MiB disk never filled")


def fill_disk(path: Path) -> None:
    """Write zeros into ``path`` until the file system says it is full."""
    with path.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()


def drain(buf: StoreAndForwardBuffer, delivered: list[wire.Message]) -> int:
    """What a publisher does with the broker back: read, 'publish', ack; return rounds."""
    cursor = buf.cursor()
    acks: list[int] = []
    for rounds in range(1, 1000):
        messages = buf.exchange(acks, cursor, 50)
        if not messages:
            return rounds
        delivered.extend(wire.decode(m.payload) for m in messages)
        acks = [m.seq for m in messages]
    raise AssertionError("the buffer never drained")


def assert_accounted(delivered: list[wire.Message], last_seq: int) -> None:
    seqs = [m.seq for m in delivered if not isinstance(m, wire.GatewayStatus)]
    assert len(seqs) == len(set(seqs)), "a message was delivered twice"
    covered = set(seqs)
    for gap in (m for m in delivered if isinstance(m, wire.GapEvent)):
        hole = set(range(gap.first_seq, gap.last_seq + 1))
        assert not hole & set(seqs), "a gap covers a delivered message"
        assert gap.dropped == len(hole)
        covered |= hole
    assert covered == set(range(1, last_seq + 1)), "a sequence number is neither sent nor marked"


def test_full_disk_sheds_oldest_marks_it_and_acks_recover(small_disk: Path) -> None:
    buf = open_buffer(small_disk)
    stored, _ = fill(buf, shed=30)
    delivered: list[wire.Message] = []
    # broker back: one pass drains everything, nothing comes back to be resent
    drain(buf, delivered)
    assert buf.pending() == []
    assert buf.exchange([], buf.cursor(), 50) == []
    assert buf.stats().acked_not_deleted == 0
    gaps = [m for m in delivered if isinstance(m, wire.GapEvent)]
    assert gaps and {g.reason for g in gaps} == {"disk_full"}
    sent = [m.seq for m in delivered if isinstance(m, wire.TelemetryBatch)]
    assert stored[-1] in sent  # the newest data was kept, the oldest made way
    assert stored[0] not in sent
    assert_accounted(delivered, buf.last_seq)

    # space came back: the reserve is re-created and telemetry is stored again
    assert buf.reserve_path.stat().st_size == RESERVE
    more = [buf.append_telemetry([point()] * 20).seq for _ in range(5)]
    stored_alarm = buf.append_alarm(alarm(tag="CH4_T1"))
    drain(buf, delivered)
    assert stored_alarm in delivered
    assert set(more) <= {m.seq for m in delivered if isinstance(m, wire.TelemetryBatch)}
    assert_accounted(delivered, buf.last_seq)
    buf.close()


def test_nothing_to_shed_refused_batches_become_gaps_alarms_use_the_reserve(
    small_disk: Path,
) -> None:
    buf = open_buffer(small_disk)
    fill_disk(small_disk / "filler")  # someone else filled the disk; the buffer holds nothing
    refused = 0
    for _ in range(3):
        with pytest.raises(BufferStorageError) as info:
            buf.append_telemetry([point()] * 20)
        assert info.value.disk_full
        refused += 1
    assert buf.points_lost == refused * 20
    stored_alarm = buf.append_alarm(alarm(tag="CH4_T1"))  # the reserve makes room for it
    delivered: list[wire.Message] = []
    drain(buf, delivered)
    assert stored_alarm in delivered
    gaps = [m for m in delivered if isinstance(m, wire.GapEvent)]
    assert {g.reason for g in gaps} == {"disk_full"}
    assert sum(g.dropped for g in gaps) == refused
    assert buf.unrecorded_gaps == 0
    assert_accounted(delivered, buf.last_seq)
    buf.close()


SIGKILL_CHILD = """
import os, signal, sys
from edge.uplink.buffer import StoreAndForwardBuffer
from tests.factories import point
buf = StoreAndForwardBuffer(sys.argv[1], 10**7, site="s1", gateway="gw1")
for i in range(3):
    buf.append_telemetry([point(value=i * 0.1)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_leaves_a_restart_gap_at_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    proc = subprocess.run(
        [sys.executable, "-c", SIGKILL_CHILD, str(path)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ},
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    buf = StoreAndForwardBuffer(path, 10**7, site="s1", gateway="gw1")
    messages = [wire.decode(m.payload) for m in buf.pending()]
    assert [type(m).__name__ for m in messages] == ["TelemetryBatch"] * 3 + ["GapEvent"]
    gap = messages[-1]
    assert isinstance(gap, wire.GapEvent) and gap.reason == "restart"
    assert (gap.first_seq, gap.last_seq, gap.seq) == (4, 4, 5)
    last = messages[2]
    assert isinstance(last, wire.TelemetryBatch)
    assert gap.ts_ns == last.sent_ns  # the hole starts where the killed run stopped storing
    buf.close()


async def test_publisher_drains_a_full_disk_buffer_once_without_a_resend_storm(
    small_disk: Path, broker: Broker
) -> None:
    """The measured fault: disk full, broker back -> the same rows resent forever."""
    buf = open_buffer(small_disk)
    fill(buf, shed=3)
    rows = len(buf.pending(10_000))
    async with subscribed(broker) as sub:
        publisher = make_publisher(buf, broker)
        async with running(publisher):
            await async_wait_until(lambda: buf.pending() == [], 20, "buffer drained")
            await async_wait_until(lambda: len(sub.data()) >= rows, 10, "all delivered")
            # each row was published once: acked rows never came back to be resent
            assert publisher.published == rows
        delivered = sub.data()
    assert_accounted(delivered, buf.last_seq)
    buf.close()
