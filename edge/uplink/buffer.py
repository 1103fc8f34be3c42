"""Durable store-and-forward buffer: SQLite (WAL) between the gateway and the broker.

Every stored message gets the next per-gateway sequence number from an
``AUTOINCREMENT`` key, so numbers increase forever: across restarts and after
rows are deleted. A row is deleted only by :meth:`StoreAndForwardBuffer.ack`,
which the publisher calls after the broker's PUBACK.

The buffer is bounded by payload bytes. When it is over ``max_bytes`` the
oldest telemetry is dropped (down to 90 % of the bound, so drops come in a few
large chunks rather than one row at a time) and a :class:`wire.GapEvent`
records the dropped sequence numbers. Alarms and gap events are never dropped.

All methods block (SQLite); call them through ``asyncio.to_thread``. They are
serialised by a lock. SQLite failures (disk full, I/O errors, a corrupt file)
raise :class:`BufferStorageError` and are counted in ``errors``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import msgspec

import wire

__all__ = ["BufferStats", "BufferStorageError", "PendingMessage", "StoreAndForwardBuffer"]

RowKind = Literal["telemetry", "alarm", "gap"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    size    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, seq);
"""

_LOW_WATER: Final = 0.9


class BufferStorageError(Exception):
    """The buffer could not read or write its SQLite file (disk full, I/O error...)."""


@dataclass(frozen=True, slots=True)
class PendingMessage:
    seq: int
    kind: RowKind
    payload: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    rows: int
    bytes: int
    alarms: int
    last_seq: int
    dropped: int  # telemetry messages dropped for space since open
    errors: int  # storage errors since open


class StoreAndForwardBuffer:
    """A bounded, durable, sequence-numbering message buffer for one gateway."""

    def __init__(self, path: str | Path, max_bytes: int, *, site: str, gateway: str) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.site = site
        self.gateway = gateway
        self.errors = 0
        self.dropped = 0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()
            self._bytes = int(row[0])
        except (sqlite3.Error, OSError) as exc:
            self.errors += 1
            raise BufferStorageError(f"cannot open buffer {self.path}: {exc}") from exc

    # -- appending ---------------------------------------------------------------

    def append_telemetry(
        self, points: Sequence[wire.Point], sent_ns: int | None = None
    ) -> wire.TelemetryBatch:
        """Store one telemetry batch; return it with its sequence number."""
        sent = time.time_ns() if sent_ns is None else sent_ns
        with self._transaction():
            seq = self._next_seq()
            batch = wire.TelemetryBatch(self.gateway, self.site, seq, sent, list(points))
            self._insert(seq, "telemetry", wire.encode(batch))
            self._make_room()
        return batch

    def append_alarm(self, event: wire.AlarmEvent) -> wire.AlarmEvent:
        return self.append_alarms([event])[0]

    def append_alarms(self, events: Iterable[wire.AlarmEvent]) -> list[wire.AlarmEvent]:
        """Store alarm events (their ``seq`` is replaced) in one transaction."""
        stored: list[wire.AlarmEvent] = []
        with self._transaction():
            for event in events:
                seq = self._next_seq()
                numbered = msgspec.structs.replace(
                    event, seq=seq, gateway=self.gateway, site=self.site
                )
                self._insert(seq, "alarm", wire.encode(numbered))
                stored.append(numbered)
            self._make_room()
        return stored

    # -- forwarding --------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[PendingMessage]:
        """Up to ``limit`` unacknowledged messages: alarms first, then oldest first."""
        with self._locked():
            rows = self._db.execute(
                "SELECT seq, kind, payload FROM messages WHERE kind = 'alarm' ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
            if len(rows) < limit:
                rows += self._db.execute(
                    "SELECT seq, kind, payload FROM messages WHERE kind != 'alarm' "
                    "ORDER BY seq LIMIT ?",
                    (limit - len(rows),),
                ).fetchall()
        return [PendingMessage(int(s), k, bytes(p)) for s, k, p in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged messages; return how many rows went."""
        wanted = [(s,) for s in seqs]
        if not wanted:
            return 0
        with self._transaction():
            before = self._count()
            size = 0
            for (seq,) in wanted:
                row = self._db.execute("SELECT size FROM messages WHERE seq = ?", (seq,)).fetchone()
                if row is not None:
                    size += int(row[0])
            self._db.executemany("DELETE FROM messages WHERE seq = ?", wanted)
            removed = before - self._count()
            self._bytes -= size
        return removed

    def stats(self) -> BufferStats:
        with self._locked():
            rows = self._count()
            alarms = int(
                self._db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'alarm'").fetchone()[0]
            )
            last = self._next_seq() - 1
        return BufferStats(rows, self._bytes, alarms, last, self.dropped, self.errors)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals ---------------------------------------------------------------

    def _locked(self) -> _Guard:
        return _Guard(self, transaction=False)

    def _transaction(self) -> _Guard:
        return _Guard(self, transaction=True)

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def _insert(self, seq: int, kind: RowKind, payload: bytes) -> None:
        self._db.execute(
            "INSERT INTO messages (seq, kind, payload, size) VALUES (?, ?, ?, ?)",
            (seq, kind, payload, len(payload)),
        )
        self._bytes += len(payload)

    def _make_room(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        target = int(self.max_bytes * _LOW_WATER)
        dropped: list[int] = []
        freed = 0
        rows = self._db.execute(
            "SELECT seq, size FROM messages WHERE kind = 'telemetry' ORDER BY seq"
        )
        for seq, size in rows:
            if self._bytes - freed <= target:
                break
            dropped.append(int(seq))
            freed += int(size)
        rows.close()
        if not dropped:
            return  # only alarms and gaps left: they are kept even past the bound
        self._db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in dropped])
        self._bytes -= freed
        self.dropped += len(dropped)
        seq = self._next_seq()
        gap = wire.GapEvent(
            gateway=self.gateway,
            site=self.site,
            seq=seq,
            first_seq=dropped[0],
            last_seq=dropped[-1],
            dropped=len(dropped),
            reason="buffer_full",
            ts_ns=time.time_ns(),
        )
        self._insert(seq, "gap", wire.encode(gap))


class _Guard:
    """Holds the buffer's lock (and a transaction); translates SQLite errors.

    A rolled-back transaction also rolls back the in-memory byte and drop counts.
    """

    def __init__(self, buffer: StoreAndForwardBuffer, *, transaction: bool) -> None:
        self._buffer = buffer
        self._transaction = transaction
        self._saved = (0, 0)

    def __enter__(self) -> None:
        buffer = self._buffer
        buffer._lock.acquire()
        self._saved = (buffer._bytes, buffer.dropped)
        if self._transaction:
            try:
                buffer._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                buffer._lock.release()
                buffer.errors += 1
                raise BufferStorageError(f"buffer {buffer.path}: {exc}") from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        buffer = self._buffer
        failure = exc
        try:
            if self._transaction and exc is None:
                try:
                    buffer._db.execute("COMMIT")
                except sqlite3.Error as commit_exc:
                    failure = commit_exc
            if self._transaction and failure is not None:
                buffer._bytes, buffer.dropped = self._saved
                with contextlib.suppress(sqlite3.Error):
                    buffer._db.execute("ROLLBACK")
        finally:
            buffer._lock.release()
        if isinstance(failure, sqlite3.Error):
            buffer.errors += 1
            raise BufferStorageError(f"buffer {buffer.path}: {failure}") from failure
