"""Durable store-and-forward buffer: SQLite (WAL) between the gateway and the broker.

Guarantees (``docs/design-notes.md`` explains them with the measured faults):

* **Written before publish.** A message is handed to the publisher only after
  the transaction that stored it committed with ``synchronous=FULL`` (the WAL
  is fsynced), so a message the broker has seen survives a power loss and its
  sequence number is never reused for something else.
* **Deleted after PUBACK.** :meth:`StoreAndForwardBuffer.ack` marks the rows
  acknowledged in memory at once (they are never handed out again) and deletes
  them; deletes commit with ``synchronous=NORMAL`` (a delete lost to a power
  cut means one resend, which the cloud drops by (gateway, seq)). A delete that
  fails (full disk) is retried on the next call; the rows stay hidden.
* **One sequence.** Telemetry, alarms and gap events share a per-gateway
  sequence number that only ever increases (``AUTOINCREMENT`` on disk, the
  next number in memory).
* **No silent loss.** Telemetry that cannot be stored (full disk, I/O error),
  samples the uplink queue had to drop and the unflushed tail of a run that
  was killed all get their own sequence numbers, so the cloud sees a hole, and
  a :class:`wire.GapEvent` naming the hole and the reason (``disk_full``,
  ``storage_error``, ``queue_full``, ``restart``, ``buffer_full``) is written as
  soon as the storage accepts a row again. ``GapEvent.dropped`` always counts
  sequence numbers (``last_seq - first_seq + 1``); the points behind them are
  counted on the gateway (``points_lost``) and logged.
* **Bounded by bytes.** Over ``max_bytes`` the oldest telemetry is dropped (down
  to 90 % of the bound) with a ``buffer_full`` gap event. Alarms and gap events
  are never dropped.
* **A full disk is an error, not a crash.** A small reserve file
  (``<buffer>.reserve``) is released the first time the disk is full, so that
  deletes, alarms and gap markers can still be written; it is re-created when
  the file system has room again.

All methods block (SQLite); call them through ``asyncio.to_thread`` and batch:
:meth:`StoreAndForwardBuffer.append_batches` stores many telemetry batches in
one transaction, :meth:`StoreAndForwardBuffer.exchange` acknowledges and reads
the next messages in one call. They are serialised by a lock. SQLite failures
raise :class:`BufferStorageError` and are counted in ``errors``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import msgspec

import wire

__all__ = [
    "BufferStats",
    "BufferStorageError",
    "PendingMessage",
    "ReadCursor",
    "StoreAndForwardBuffer",
]

log = logging.getLogger("safewatch.edge.buffer")

RowKind = Literal["telemetry", "alarm", "gap"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    size    INTEGER NOT NULL,
    points  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, seq);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_LOW_WATER: Final = 0.9
DEFAULT_RESERVE_BYTES: Final = 1024 * 1024
_RESERVE_RETRY_S: Final = 5.0
_WAL_PAGES: Final = 128  # autocheckpoint (pages of 4 KiB): keep the reserve well above this
_CHUNK: Final = 500  # host parameters per statement, well under SQLite's limit
_DATA: Final = "kind != 'alarm'"  # a primary-key range scan (an IN list would sort)


class BufferStorageError(Exception):
    """The buffer could not read or write its SQLite file (disk full, I/O error...).

    ``disk_full`` is true when SQLite reported that the disk (or the file size
    limit) is full.
    """

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True, slots=True)
class PendingMessage:
    seq: int
    kind: RowKind
    payload: bytes
    points: int = 0


@dataclass(frozen=True, slots=True)
class BufferStats:
    rows: int
    bytes: int
    alarms: int
    last_seq: int
    dropped: int  # telemetry messages dropped for space since open
    errors: int  # storage errors since open
    points_lost: int = 0  # points that never got into the buffer (disk, queue) since open
    unrecorded_gaps: int = 0  # gap events still waiting for room on disk
    acked_not_deleted: int = 0  # PUBACKed rows whose delete is still to be retried


@dataclass(slots=True)
class ReadCursor:
    """Where the publisher is in the buffer during one broker session.

    ``boundary`` is the last sequence number stored before the session began:
    data rows up to it are backlog (drained oldest first, rate-limited), rows
    after it are live (sent as soon as they are stored). Alarms go first.
    """

    boundary: int
    alarm_after: int = 0
    live_after: int = 0
    backlog_after: int = 0

    def __post_init__(self) -> None:
        self.live_after = max(self.live_after, self.boundary)

    @property
    def backlog_done(self) -> bool:
        return self.backlog_after >= self.boundary


@dataclass(slots=True)
class _Loss:
    first_seq: int
    last_seq: int
    reason: str
    points: int
    ts_ns: int


@dataclass(slots=True)
class _Counters:
    errors: int = 0
    dropped: int = 0
    points_lost: int = 0
    reserve_released: int = 0
    losses: list[_Loss] = field(default_factory=list)


def _is_disk_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == sqlite3.SQLITE_FULL
    return "disk is full" in str(exc) or "disk full" in str(exc)


class RateLimitedLog:
    """Logs the first event at once, then at most one summary every ``every_s`` seconds.

    A full disk refuses a batch every 0.25 s; one line per refusal would bury the log (a
    false-fault storm once wrote 384,000 WARNING lines a minute), so losses are summed.
    """

    def __init__(self, logger: logging.Logger, level: int, every_s: float = 10.0) -> None:
        self._logger = logger
        self._level = level
        self._every_s = every_s
        self._next = 0.0
        self._pending = 0

    def note(self, count: int, msg: str, *args: object) -> None:
        """Add ``count``; log ``msg % args`` with the count summed since the last line."""
        self._pending += count
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._every_s
        total, self._pending = self._pending, 0
        self._logger.log(self._level, msg + " (%d since the last report)", *args, total)


class StoreAndForwardBuffer:
    """A bounded, durable, sequence-numbering message buffer for one gateway."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        *,
        site: str,
        gateway: str,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.site = site
        self.gateway = gateway
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.reserve_bytes = max(0, reserve_bytes)
        self.reserve_retry_s = _RESERVE_RETRY_S  # how often a missing reserve is tried again
        self._c = _Counters()
        self._acked: set[int] = set()
        self._lock = threading.Lock()
        self._reserve_next_try = 0.0
        self._sync = ""
        self._disk_was_full = False
        self._loss_log = RateLimitedLog(log, logging.ERROR)
        self._ack_log = RateLimitedLog(log, logging.WARNING)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # before the first table: lets freed pages go back to the file system
            # (PRAGMA incremental_vacuum) after a full disk; no effect on old files
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            # a short WAL: a checkpoint never needs much free disk, and the WAL
            # file is cut back to this size after it
            self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_PAGES * 4096}")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(messages)")}
            if "points" not in columns:  # a buffer written by an older version
                self._db.execute(
                    "ALTER TABLE messages ADD COLUMN points INTEGER NOT NULL DEFAULT 0"
                )
            row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()
            self._bytes = int(row[0])
            self._seq = self._stored_last_seq()
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.Error, OSError) as exc:
            self._c.errors += 1
            raise BufferStorageError(f"cannot open buffer {self.path}: {exc}") from exc
        self._ensure_reserve()
        if meta.get("clean", 1) == 0:
            # the previous run ended without close(): whatever it held in memory
            # (a telemetry batch, queued samples) is gone; mark the hole
            since = int(meta.get("stored_ns", 0)) or time.time_ns()
            self._c.losses.append(_Loss(self._seq + 1, self._seq + 1, "restart", 0, since))
            self._seq += 1
            log.warning(
                "buffer %s: the previous run did not shut down cleanly; samples since "
                "%s may be lost (gap event seq %d, reason restart)",
                self.path,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since / 1e9)),
                self._seq,
            )
        with contextlib.suppress(BufferStorageError):
            self._write(self._flush_losses_and_mark_running)
        if self._c.losses:
            log.error("buffer %s: gap events not recorded yet (disk full?)", self.path)

    # -- counters (kept in one object so a rolled-back transaction can restore them) --

    @property
    def errors(self) -> int:
        return self._c.errors

    @property
    def dropped(self) -> int:
        return self._c.dropped

    @property
    def points_lost(self) -> int:
        return self._c.points_lost

    @property
    def unrecorded_gaps(self) -> int:
        """Losses whose gap event still waits for room on disk."""
        return len(self._c.losses)

    @property
    def last_seq(self) -> int:
        return self._seq

    # -- appending ---------------------------------------------------------------

    def append_telemetry(
        self, points: Sequence[wire.Point], sent_ns: int | None = None
    ) -> wire.TelemetryBatch:
        """Store one telemetry batch; return it with its sequence number."""
        return self.append_batches([points], sent_ns=sent_ns)[0]

    def append_batches(
        self,
        batches: Sequence[Sequence[wire.Point]],
        *,
        sent_ns: int | None = None,
        lost_points: int = 0,
        lost_reason: str = "queue_full",
    ) -> list[wire.TelemetryBatch]:
        """Store several telemetry batches in one transaction (one fsync).

        ``lost_points`` (samples dropped before they reached the buffer) get a
        sequence number and a gap event of ``lost_reason`` first. On a storage
        failure the batches' sequence numbers become a recorded gap and
        :class:`BufferStorageError` is raised.
        """
        sent = time.time_ns() if sent_ns is None else sent_ns
        with self._lock:
            if lost_points > 0:
                self._reserve_loss(1, lost_reason, lost_points)
            saved_seq = self._seq
            out: list[wire.TelemetryBatch] = []

            def body() -> None:
                out.clear()
                self._seq = saved_seq
                self._flush_losses()
                for points in batches:
                    self._seq += 1
                    batch = wire.TelemetryBatch(
                        self.gateway, self.site, self._seq, sent, list(points)
                    )
                    self._insert(self._seq, "telemetry", wire.encode(batch), len(points))
                    out.append(batch)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('stored_ns', ?)", (sent,)
                )
                self._make_room()

            if self._disk_was_full:
                self._recover_reserve()  # space may have come back without any ack
            for attempt in (1, 2):
                try:
                    if self._disk_was_full and not self._fits_in_free_pages(batches):
                        # the reserve is gone: telemetry may only reuse freed pages, never
                        # take the space acks, alarms and gap markers need
                        raise BufferStorageError(
                            f"buffer {self.path}: disk full (telemetry waits for freed space)",
                            disk_full=True,
                        )
                    self._transact(body, sync="FULL", use_reserve=False)
                    break
                except BufferStorageError as exc:
                    self._seq = saved_seq
                    if exc.disk_full:
                        self._disk_was_full = True
                        if attempt == 1 and self._shed_for_disk(batches):
                            saved_seq = self._seq  # the shed's gap events took numbers
                            continue  # the oldest telemetry made way: store the new batches
                    reason = "disk_full" if exc.disk_full else "storage_error"
                    self._reserve_loss(len(batches), reason, sum(len(b) for b in batches))
                    with contextlib.suppress(BufferStorageError):
                        self._transact(self._flush_losses, sync="FULL", use_reserve=True)
                    raise
        return out

    def record_loss(self, points: int, reason: str) -> None:
        """Record ``points`` samples lost before the buffer (one sequence number, one gap)."""
        with self._lock:
            self._reserve_loss(1, reason, points)
            with contextlib.suppress(BufferStorageError):
                self._transact(self._flush_losses, sync="FULL", use_reserve=True)

    def append_alarm(self, event: wire.AlarmEvent) -> wire.AlarmEvent:
        return self.append_alarms([event])[0]

    def append_alarms(self, events: Iterable[wire.AlarmEvent]) -> list[wire.AlarmEvent]:
        """Store alarm events (their ``seq`` is replaced) in one durable transaction.

        Alarms may use the disk reserve. On failure nothing is stored (the
        caller keeps and retries them) and no sequence number is consumed.
        """
        wanted = list(events)
        stored: list[wire.AlarmEvent] = []
        with self._lock:
            saved_seq = self._seq

            def body() -> None:
                stored.clear()
                self._seq = saved_seq
                self._flush_losses()
                for event in wanted:
                    self._seq += 1
                    numbered = msgspec.structs.replace(
                        event, seq=self._seq, gateway=self.gateway, site=self.site
                    )
                    self._insert(self._seq, "alarm", wire.encode(numbered), 0)
                    stored.append(numbered)
                self._make_room()

            try:
                self._transact(body, sync="FULL", use_reserve=True)
            except BufferStorageError:
                self._seq = saved_seq
                raise
        return stored

    # -- forwarding --------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[PendingMessage]:
        """Up to ``limit`` unacknowledged messages: alarms first, then oldest first."""
        with self._lock, self._reading():
            rows = self._select("kind = 'alarm'", 0, None, limit)
            if len(rows) < limit:
                rows += self._select(_DATA, 0, None, limit - len(rows))
        return rows

    def cursor(self) -> ReadCursor:
        """A fresh read position for a new broker session (everything stored so far is backlog)."""
        with self._lock:
            return ReadCursor(boundary=self._seq)

    def exchange(
        self,
        acks: Sequence[int],
        cursor: ReadCursor,
        limit: int,
        backlog_points: int | None = None,
    ) -> list[PendingMessage]:
        """Acknowledge ``acks`` and return the next messages for ``cursor`` in one call.

        Order: alarms, then live data (stored after the session began), then
        backlog oldest first while its points fit ``backlog_points`` (None: no
        limit; a row bigger than the whole allowance still goes when nothing
        else of the backlog was taken). A failed delete does not fail the read.
        """
        if acks:
            try:
                self.ack(acks)
            except BufferStorageError as exc:
                # the rows stay hidden; the delete is retried with the next ack
                self._ack_log.note(
                    len(acks),
                    "buffer %s: delete after PUBACK failed, will retry: %s",
                    self.path,
                    exc,
                )
        if limit <= 0:
            return []
        with self._lock, self._reading():
            out = self._select("kind = 'alarm'", cursor.alarm_after, None, limit)
            if out:
                cursor.alarm_after = out[-1].seq
            if len(out) < limit:
                live = self._select(_DATA, cursor.live_after, None, limit - len(out))
                if live:
                    cursor.live_after = live[-1].seq
                out += live
            if len(out) < limit and not cursor.backlog_done:
                backlog = self._select(
                    _DATA,
                    cursor.backlog_after,
                    cursor.boundary,
                    limit - len(out),
                )
                budget = backlog_points
                for message in backlog:
                    if budget is not None and budget <= 0:
                        break  # the caller's drain allowance is spent (may overshoot by one row)
                    out.append(message)
                    cursor.backlog_after = message.seq
                    if budget is not None:
                        budget -= message.points
                if not backlog:
                    cursor.backlog_after = cursor.boundary
        return out

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged messages; return how many rows went.

        The rows are hidden from :meth:`pending`/:meth:`exchange` at once; if the
        delete fails (full disk) it is retried with the next ack and the error
        is raised.
        """
        with self._lock:
            self._acked.update(seqs)
            if not self._acked:
                return 0
            removed = self._delete_acked()
            if self._disk_was_full:
                self._give_back_space()
            if self._c.losses:
                with contextlib.suppress(BufferStorageError):
                    self._transact(self._flush_losses, sync="FULL", use_reserve=False)
        return removed

    def stats(self) -> BufferStats:
        with self._lock, self._reading():
            rows = self._count()
            alarms = int(
                self._db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'alarm'").fetchone()[0]
            )
            return BufferStats(
                rows,
                self._bytes,
                alarms,
                self._seq,
                self._c.dropped,
                self._c.errors,
                self._c.points_lost,
                len(self._c.losses),
                len(self._acked),
            )

    def close(self, *, clean: bool = True) -> None:
        """Close the file; ``clean`` says everything the run accepted was stored.

        A buffer closed with ``clean=False``, or not closed at all (SIGKILL,
        power loss), records a ``restart`` gap event when it is opened next.
        """
        with self._lock:
            if self._acked:
                with contextlib.suppress(BufferStorageError):
                    self._delete_acked()

            def finish() -> None:
                self._flush_losses()
                if clean:
                    self._set_meta("clean", 1)

            try:
                self._transact(finish, sync="FULL", use_reserve=True)
            except BufferStorageError as exc:
                log.error("buffer %s: closing without a clean mark: %s", self.path, exc)
            finally:
                self._db.close()

    # -- internals ---------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            self._c.errors += 1
            raise BufferStorageError(f"buffer {self.path}: {exc}") from exc

    def _stored_last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        high = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()
        return max(int(row[0]) if row else 0, int(high[0]))

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]) - len(
            self._acked
        )

    def _select(self, where: str, after: int, upto: int | None, limit: int) -> list[PendingMessage]:
        """Rows matching ``where`` with ``after < seq <= upto``, skipping acked ones."""
        out: list[PendingMessage] = []
        bound = "" if upto is None else f" AND seq <= {int(upto)}"
        while len(out) < limit:
            want = limit - len(out)
            rows = self._db.execute(
                f"SELECT seq, kind, payload, points FROM messages WHERE {where} AND seq > ?"
                f"{bound} ORDER BY seq LIMIT ?",
                (after, want),
            ).fetchall()
            for s, k, p, n in rows:
                if s not in self._acked:
                    out.append(PendingMessage(int(s), k, bytes(p), int(n)))
            if len(rows) < want or not rows:
                break
            after = int(rows[-1][0])
        return out

    def _insert(self, seq: int, kind: RowKind, payload: bytes, points: int) -> None:
        self._db.execute(
            "INSERT INTO messages (seq, kind, payload, size, points) VALUES (?, ?, ?, ?, ?)",
            (seq, kind, payload, len(payload), points),
        )
        self._bytes += len(payload)

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _flush_losses_and_mark_running(self) -> None:
        self._flush_losses()
        self._set_meta("clean", 0)

    def _reserve_loss(self, count: int, reason: str, points: int) -> None:
        first = self._seq + 1
        self._seq += count
        self._c.points_lost += points
        last = self._c.losses[-1] if self._c.losses else None
        if last is not None and last.reason == reason and last.last_seq + 1 == first:
            last.last_seq = self._seq
            last.points += points
        else:
            self._c.losses.append(_Loss(first, self._seq, reason, points, time.time_ns()))
        self._loss_log.note(
            points,
            "buffer %s: points not stored (%s), latest as sequence %d..%d; "
            "every loss is marked by a gap event",
            self.path,
            reason,
            first,
            self._seq,
        )

    def _flush_losses(self) -> None:
        """Insert a gap event for every recorded loss (inside the caller's transaction)."""
        losses = self._c.losses
        if not losses:
            return
        for loss in losses:
            self._seq += 1
            gap = wire.GapEvent(
                gateway=self.gateway,
                site=self.site,
                seq=self._seq,
                first_seq=loss.first_seq,
                last_seq=loss.last_seq,
                dropped=loss.last_seq - loss.first_seq + 1,
                reason=loss.reason,
                ts_ns=loss.ts_ns,
            )
            self._insert(self._seq, "gap", wire.encode(gap), 0)
        self._c.losses = []  # restored by _transact if the transaction fails

    def _delete_acked(self) -> int:
        wanted = sorted(self._acked)

        def body() -> None:
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                size = self._db.execute(
                    f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages WHERE seq IN ({marks})",
                    part,
                ).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", part)
                self._bytes -= int(size[0])
                removed[0] += int(size[1])

        removed = [0]
        self._transact(body, sync="NORMAL", use_reserve=True)
        self._acked.difference_update(wanted)
        return removed[0]

    def _transact(self, body: Callable[[], None], *, sync: str, use_reserve: bool) -> None:
        """Run ``body()`` in one transaction; on a full disk release the reserve and retry once."""
        try:
            self._transact_once(body, sync)
        except BufferStorageError as exc:
            if not (exc.disk_full and use_reserve):
                raise
            self._disk_was_full = True
            self._release_reserve()
            self._checkpoint()
            self._transact_once(body, sync)

    def _transact_once(self, body: Callable[[], None], sync: str) -> None:
        saved = (self._bytes, self._c.dropped, list(self._c.losses), self._seq)
        try:
            if sync != self._sync:
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            self._db.execute("BEGIN IMMEDIATE")
            try:
                body()
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._bytes, self._c.dropped, self._c.losses, self._seq = saved
            self._c.errors += 1
            full = _is_disk_full(exc)
            raise BufferStorageError(
                f"buffer {self.path}: {exc}" + (" (disk full)" if full else ""), disk_full=full
            ) from exc
        except BaseException:
            self._bytes, self._c.dropped, self._c.losses, self._seq = saved
            raise

    def _write(self, body: Callable[[], None]) -> None:
        with self._lock:
            self._transact(body, sync="FULL", use_reserve=True)

    @staticmethod
    def _estimate(batches: Sequence[Sequence[wire.Point]]) -> int:
        return sum(len(b) for b in batches) * 256 + 2 * 4096

    def _fits_in_free_pages(self, batches: Sequence[Sequence[wire.Point]]) -> bool:
        estimate = self._estimate(batches)
        try:
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error:
            return False
        return free * page >= estimate

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and cut it to zero (frees its disk space)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _recover_reserve(self) -> None:
        """Re-create the reserve (rate-limited); once it is back, the disk is no longer full."""
        self._ensure_reserve()
        if self.reserve_bytes <= 0 or self._reserve_ok():
            self._disk_was_full = False
            log.warning("buffer %s: disk space is back; the reserve is re-created", self.path)

    def _reserve_ok(self) -> bool:
        try:
            return self.reserve_path.stat().st_size >= self.reserve_bytes
        except OSError:
            return False

    def _give_back_space(self) -> None:
        """After a full disk: return free pages to the file system, then re-create the reserve."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA incremental_vacuum").fetchall()
        self._checkpoint()
        self._ensure_reserve(force=True)
        if self.reserve_bytes <= 0 or self._reserve_ok():
            self._disk_was_full = False

    def _release_reserve(self) -> bool:
        """Free the reserve file; True if there was one to free."""
        try:
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("buffer %s: cannot release the disk reserve: %s", self.path, exc)
            return False
        self._c.reserve_released += 1
        self._reserve_next_try = time.monotonic() + self.reserve_retry_s
        log.error(
            "buffer %s: disk full; released the %d-byte reserve so acks, alarms and gap "
            "markers can still be written",
            self.path,
            size,
        )
        return size > 0

    def _ensure_reserve(self, *, force: bool = False) -> None:
        """Create the reserve file if missing and the file system has room (rate-limited)."""
        if self.reserve_bytes <= 0 or (not force and time.monotonic() < self._reserve_next_try):
            return
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        self._reserve_next_try = time.monotonic() + self.reserve_retry_s
        try:
            with self.reserve_path.open("wb") as out:
                chunk = b"\0" * min(self.reserve_bytes, 64 * 1024)
                left = self.reserve_bytes
                while left > 0:
                    left -= out.write(chunk[:left])
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()

    def _make_room(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        self._drop_oldest(self._bytes - int(self.max_bytes * _LOW_WATER), "buffer_full")

    def _drop_oldest(self, wanted: int, reason: str) -> int:
        """Delete the oldest telemetry worth ``wanted`` bytes, one gap event per contiguous run.

        Inside the caller's transaction. Alarms and gap events are never dropped. Returns
        the bytes freed (0 when there was no telemetry left to drop).
        """
        dropped: list[int] = []
        freed = 0
        rows = self._db.execute(
            "SELECT seq, size FROM messages WHERE kind = 'telemetry' ORDER BY seq"
        )
        for seq, size in rows:
            if freed >= wanted:
                break
            if int(seq) in self._acked:
                continue
            dropped.append(int(seq))
            freed += int(size)
        rows.close()
        if not dropped:
            return 0  # only alarms and gaps left: they are kept even past the bound
        for i in range(0, len(dropped), _CHUNK):
            part = dropped[i : i + _CHUNK]
            self._db.execute(
                f"DELETE FROM messages WHERE seq IN ({','.join('?' * len(part))})", part
            )
        self._bytes -= freed
        self._c.dropped += len(dropped)
        # one gap per run of consecutive numbers, so a gap never spans a kept message
        runs: list[list[int]] = [[dropped[0], dropped[0]]]
        for seq in dropped[1:]:
            if seq == runs[-1][1] + 1:
                runs[-1][1] = seq
            else:
                runs.append([seq, seq])
        now = time.time_ns()
        for first, last in runs:
            self._seq += 1
            gap = wire.GapEvent(
                gateway=self.gateway,
                site=self.site,
                seq=self._seq,
                first_seq=first,
                last_seq=last,
                dropped=last - first + 1,
                reason=reason,
                ts_ns=now,
            )
            self._insert(self._seq, "gap", wire.encode(gap), 0)
        return freed

    def _shed_for_disk(self, batches: Sequence[Sequence[wire.Point]]) -> bool:
        """The disk is full: drop the oldest telemetry so the newest can be stored.

        Live data matters more than an old backlog, as with the byte bound. Frees about a
        tenth of the buffer (at least room for ``batches``); True if anything was freed.
        """
        wanted = max(self._estimate(batches) * 2, self._bytes // 10)
        freed = [0]

        def body() -> None:
            freed[0] = self._drop_oldest(wanted, "disk_full")

        try:
            self._transact(body, sync="FULL", use_reserve=True)
        except BufferStorageError:
            return False
        if freed[0]:
            log.warning(
                "buffer %s: disk full; dropped %d bytes of the oldest telemetry (gap events "
                "disk_full) to keep storing live data",
                self.path,
                freed[0],
            )
        return freed[0] > 0
