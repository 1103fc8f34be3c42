"""The relational store: alarm history, latest values, gateway state, seen sequence numbers,
the dead letters of the ingest and its InfluxDB spool.

SQLAlchemy 2 (sync engine); SQLite by default (WAL mode), PostgreSQL in production.
Every write is idempotent: alarms are unique on (gateway, seq), latest values only
move forward in time, and ``note_seq`` remembers which (gateway, seq) were already
processed in the ``seen_seq`` table so duplicates are recognised after a restart.
Blocking: call from a worker thread (``asyncio.to_thread``) in async code.

The ingest writes one :class:`BatchCommit` per batch of MQTT messages in ONE
transaction (:meth:`Store.commit_batch`): the seq marks, alarms, gaps, statuses,
latest values, dead letters and - while InfluxDB is down - the spooled lines.
Either all of a batch is durable (and the ingest acks it) or none is (and the
broker redelivers it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from psycopg.abc import Buffer
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import wire
from cloud.storage._errors import StoreError, StoreRejected

__all__ = [
    "AlarmRecord",
    "Base",
    "BatchCommit",
    "DeadLetter",
    "DeadLetterRecord",
    "GatewayRecord",
    "LatestValue",
    "SpoolChunk",
    "Store",
    "TagCondition",
]

# How many sequence numbers below a gateway's newest one stay remembered in seen_seq;
# older ones are pruned (alarms stay deduplicated by their own unique key anyway).
SEEN_SEQ_WINDOW = 100_000
_PRUNE_EVERY = 1000
# Lines per spool row: the drainer writes whole rows to InfluxDB.
SPOOL_CHUNK_LINES = 5000


NUL_REPLACEMENT = "\ufffd"  # what a NUL in text becomes on PostgreSQL


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class AlarmEventRow(Base):
    __tablename__ = "alarm_events"
    __table_args__ = (
        sa.UniqueConstraint("gateway", "seq", name="uq_alarm_events_gateway_seq"),
        sa.Index("ix_alarm_events_site_ts", "site", "ts_ns"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(sa.String(128))
    site: Mapped[str] = mapped_column(sa.String(128))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    alarm_id: Mapped[str] = mapped_column(sa.String(256))
    tag: Mapped[str] = mapped_column(sa.String(256))
    device: Mapped[str] = mapped_column(sa.String(256))
    kind: Mapped[str] = mapped_column(sa.String(64))
    area: Mapped[str] = mapped_column(sa.String(256))
    position: Mapped[str] = mapped_column(sa.String(256))
    level: Mapped[str] = mapped_column(sa.String(16))
    previous: Mapped[str] = mapped_column(sa.String(16))
    value: Mapped[float | None] = mapped_column(sa.Float)
    threshold: Mapped[float | None] = mapped_column(sa.Float)
    ts_ns: Mapped[int] = mapped_column(sa.BigInteger)
    message: Mapped[str] = mapped_column(sa.Text)
    actuators: Mapped[list[str]] = mapped_column(sa.JSON)
    received_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    # why, as a field (comms_lost, over_range, fan_stopped...); added after the first schema:
    # create_all adds it to an older table (_ADDED_COLUMNS)
    reason: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    # the operator console answering for the area (EEMUA 191 counts per operator); empty
    # from older gateways; added by Alembic revision 0004
    console: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")


# Columns added to existing tables after their first release: (table, column, SQL type and
# default). ``Store.create_all`` adds the ones an older database lacks.
_ADDED_COLUMNS = (
    ("alarm_events", "reason", "TEXT NOT NULL DEFAULT ''"),
    ("alarm_events", "console", "VARCHAR(64) NOT NULL DEFAULT ''"),
)


class LatestValueRow(Base):
    __tablename__ = "latest_values"

    site: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    tag: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    device: Mapped[str] = mapped_column(sa.String(256))
    gateway: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[str] = mapped_column(sa.String(64))
    unit: Mapped[str] = mapped_column(sa.String(32))
    area: Mapped[str] = mapped_column(sa.String(256))
    position: Mapped[str] = mapped_column(sa.String(256))
    value: Mapped[float | None] = mapped_column(sa.Float)
    quality: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    ts_ns: Mapped[int] = mapped_column(sa.BigInteger)


class GatewayRow(Base):
    __tablename__ = "gateways"

    gateway: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    site: Mapped[str] = mapped_column(sa.String(128))
    state: Mapped[str] = mapped_column(sa.String(16), default="unknown")
    status_ts_ns: Mapped[int | None] = mapped_column(sa.BigInteger)
    version: Mapped[str] = mapped_column(sa.String(64), default="")
    last_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    gaps: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    dropped: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_seen: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class SeenSeqRow(Base):
    __tablename__ = "seen_seq"

    gateway: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)


class DeadLetterRow(Base):
    """A message the ingest could not use, kept with its payload and the reason.

    Unique on ``digest`` (SHA-256 of topic and payload): a redelivery of the same
    message (after a crash, or a broker that sends it twice) adds to ``copies``.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (
        sa.UniqueConstraint("digest", name="uq_dead_letters_digest"),
        {"sqlite_autoincrement": True},  # ids never come back: a replay stops at today's newest
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    received_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    topic: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    reason: Mapped[str] = mapped_column(sa.String(64))
    detail: Mapped[str] = mapped_column(sa.Text)
    digest: Mapped[str] = mapped_column(sa.String(64))
    copies: Mapped[int] = mapped_column(sa.Integer, default=1)


class SpoolRow(Base):
    """Line-protocol lines accepted by the ingest while InfluxDB could not take them."""

    __tablename__ = "influx_spool"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    lines: Mapped[str] = mapped_column(sa.Text)  # newline-separated
    points: Mapped[int] = mapped_column(sa.Integer)
    spooled_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


_ALARMS = cast(sa.Table, AlarmEventRow.__table__)
_DEAD = cast(sa.Table, DeadLetterRow.__table__)
_SPOOL = cast(sa.Table, SpoolRow.__table__)
_LATEST = cast(sa.Table, LatestValueRow.__table__)
_GATEWAYS = cast(sa.Table, GatewayRow.__table__)
_SEEN = cast(sa.Table, SeenSeqRow.__table__)


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    id: int
    gateway: str
    site: str
    seq: int
    alarm_id: str
    tag: str
    device: str
    kind: str
    area: str
    position: str
    level: str
    previous: str
    value: float | None
    threshold: float | None
    ts_ns: int
    message: str
    actuators: list[str]
    received_at: dt.datetime
    reason: str = ""
    console: str = ""


@dataclass(frozen=True, slots=True)
class LatestValue:
    site: str
    tag: str
    device: str
    gateway: str
    kind: str
    unit: str
    area: str
    position: str
    value: float | None
    quality: str
    reason: str | None
    ts_ns: int


@dataclass(frozen=True, slots=True)
class TagCondition:
    """The newest alarm event of one (tag, kind): its level and where it is."""

    tag: str
    kind: str
    area: str
    level: str


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    gateway: str
    site: str
    state: str
    last_seq: int | None
    gaps: int
    dropped: int
    last_seen: dt.datetime | None
    version: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message to keep as a dead letter: what came, and why it was not used."""

    topic: str
    payload: bytes
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    received_at: dt.datetime
    topic: str
    payload: bytes
    reason: str
    detail: str
    copies: int = 1


@dataclass(frozen=True, slots=True)
class SpoolChunk:
    id: int
    lines: list[str]


@dataclass
class BatchCommit:
    """Everything one ingest batch makes durable, in one transaction.

    ``seqs`` are the new (gateway, site, seq) in arrival order; ``latest`` is one
    row per (site, tag), already the newest of the batch; ``spool`` holds lines
    InfluxDB could not take yet; ``replaced`` are dead-letter ids a replay
    consumes.
    """

    seqs: list[tuple[str, str, int]] = field(default_factory=list)
    alarms: list[wire.AlarmEvent] = field(default_factory=list)
    gaps: list[wire.GapEvent] = field(default_factory=list)
    statuses: list[wire.GatewayStatus] = field(default_factory=list)
    latest: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    spool: list[str] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.seqs,
                self.alarms,
                self.gaps,
                self.statuses,
                self.latest,
                self.dead_letters,
                self.spool,
                self.replaced,
            )
        )


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class _NulSafeText(StrDumperUnknown):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", NUL_REPLACEMENT))


class _NulSafeTextBinary(StrBinaryDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", NUL_REPLACEMENT))


def _pg_nul_safe_text(dbapi_conn: Any, _record: Any) -> None:
    """PostgreSQL text cannot hold a NUL byte: psycopg would refuse the whole statement
    (a filter ``?site=a%00b`` answered 503, a hazard title with one could not be stored).
    NUL becomes U+FFFD on the way in: no stored name holds one, so a lookup finds
    nothing, and stored text keeps a visible mark where the NUL was."""
    dbapi_conn.adapters.register_dumper(str, _NulSafeText)
    dbapi_conn.adapters.register_dumper(str, _NulSafeTextBinary)


class Store:
    """Alarm history, latest values and gateway bookkeeping on SQLite or PostgreSQL.

    ``schema`` (PostgreSQL) puts every table in that schema, e.g. for tests.
    Every method raises :class:`StoreError` when the database fails.
    """

    def __init__(self, url: str, *, schema: str | None = None, echo: bool = False) -> None:
        self.url = url
        self.schema = schema
        try:
            backend = sa.make_url(url).get_backend_name()
        except SQLAlchemyError as exc:
            raise StoreError(f"bad database URL {url!r}: {exc}") from exc
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {backend!r}: use sqlite or postgresql")
        connect_args: dict[str, Any] = {}
        execution_options: dict[str, Any] = {}
        if backend == "sqlite":
            connect_args["timeout"] = 30
        if schema is not None:
            execution_options["schema_translate_map"] = {None: schema}
        try:
            self.engine: Engine = sa.create_engine(
                url,
                echo=echo,
                connect_args=connect_args,
                execution_options=execution_options,
                pool_pre_ping=True,
            )
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open database {url!r}: {exc}") from exc
        self.dialect = backend
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine, "connect", _pg_nul_safe_text)
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._since_prune = 0
        self._advance_seq = _advance_seq_statement()
        self._latest_upsert = self._latest_upsert_statement()
        dead = self._insert(_DEAD)
        self._dead_letter_upsert = dead.on_conflict_do_update(
            index_elements=["digest"], set_={"copies": _DEAD.c.copies + 1}
        )

    def _latest_upsert_statement(self) -> Any:
        """One upsert, run as executemany: newer values replace older ones, never the reverse."""
        table = _LATEST
        stmt = self._insert(table)
        return stmt.on_conflict_do_update(
            index_elements=["site", "tag"],
            set_={c.name: stmt.excluded[c.name] for c in table.c if c.name not in ("site", "tag")},
            where=table.c.ts_ns < stmt.excluded.ts_ns,
        )

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (DataError, IntegrityError) as exc:
            raise StoreRejected(f"database {self.engine.url.render_as_string()}: {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.engine.url.render_as_string()}: {exc}") from exc

    def create_all(self) -> None:
        with self._begin() as conn:
            Base.metadata.create_all(conn)
            inspector = sa.inspect(conn)
            for table, column, ddl in _ADDED_COLUMNS:
                have = {c["name"] for c in inspector.get_columns(table, schema=self.schema)}
                if column not in have:
                    quote = conn.dialect.identifier_preparer.quote
                    name = (
                        quote(table)
                        if self.schema is None
                        else f"{quote(self.schema)}.{quote(table)}"
                    )
                    conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {quote(column)} {ddl}"))

    def drop_all(self) -> None:
        with self._begin() as conn:
            Base.metadata.drop_all(conn)

    def ping(self) -> bool:
        try:
            with self._begin() as conn:
                conn.execute(sa.text("SELECT 1"))
        except StoreError:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------------------

    def note_seq(self, gateway: str, site: str, seq: int) -> bool:
        """Remember (gateway, seq); False when it was already seen (a duplicate).

        Also keeps the gateway's ``last_seq`` and ``gaps`` (sequence numbers
        skipped so far; a late arrival fills one back in).
        """
        seen = _SEEN
        gw = _GATEWAYS
        with self._begin() as conn:
            inserted = conn.execute(
                self._insert(seen)
                .values(gateway=gateway, seq=seq)
                .on_conflict_do_nothing()
                .returning(seen.c.seq)
            ).first()
            if inserted is None:
                return False
            conn.execute(
                self._insert(gw)
                .values(gateway=gateway, site=site, state="unknown", gaps=0, dropped=0, version="")
                .on_conflict_do_nothing()
            )
            last = gw.c.last_seq
            conn.execute(
                gw.update()
                .where(gw.c.gateway == gateway)
                .values(
                    gaps=sa.case(
                        (last.is_(None), gw.c.gaps),
                        (last < seq, gw.c.gaps + (seq - last - 1)),
                        (gw.c.gaps > 0, gw.c.gaps - 1),
                        else_=gw.c.gaps,
                    ),
                    last_seq=sa.case((last.is_(None) | (last < seq), seq), else_=last),
                    site=site,
                    last_seen=_utcnow(),
                )
            )
            self._since_prune += 1
            if self._since_prune >= _PRUNE_EVERY:
                self._since_prune = 0
                conn.execute(
                    seen.delete().where(
                        seen.c.gateway == gateway, seen.c.seq < seq - SEEN_SEQ_WINDOW
                    )
                )
        return True

    def seen(self, gateway: str, seq: int) -> bool:
        """Whether (gateway, seq) was already processed (read only; see :meth:`note_seq`)."""
        seen = _SEEN
        with self._begin() as conn:
            row = conn.execute(
                sa.select(seen.c.seq).where(seen.c.gateway == gateway, seen.c.seq == seq)
            ).first()
        return row is not None

    def record_alarm(self, ev: wire.AlarmEvent) -> bool:
        """Store an alarm change; False when (gateway, seq) is already stored."""
        with self._begin() as conn:
            return self._record_alarm(conn, ev, _utcnow())

    def _record_alarm(self, conn: Connection, ev: wire.AlarmEvent, now: dt.datetime) -> bool:
        table = _ALARMS
        stmt = (
            self._insert(table)
            .values(
                gateway=ev.gateway,
                site=ev.site,
                seq=ev.seq,
                alarm_id=ev.alarm_id,
                tag=ev.tag,
                device=ev.device,
                kind=ev.kind,
                area=ev.area,
                position=ev.position,
                level=ev.level,
                previous=ev.previous,
                value=ev.value,
                threshold=ev.threshold,
                ts_ns=ev.ts_ns,
                message=ev.message,
                actuators=list(ev.actuators),
                received_at=now,
                reason=ev.reason,
                console=ev.console,
            )
            .on_conflict_do_nothing(index_elements=["gateway", "seq"])
            .returning(table.c.id)
        )
        return conn.execute(stmt).first() is not None

    def upsert_latest(self, batch: wire.TelemetryBatch) -> int:
        """Keep the newest value per (site, tag); older points never overwrite. Returns rows."""
        newest: dict[str, wire.Point] = {}
        for point in batch.points:
            held = newest.get(point.tag)
            if held is None or point.ts_ns > held.ts_ns:
                newest[point.tag] = point
        if not newest:
            return 0
        rows = [
            {
                "site": batch.site,
                "tag": p.tag,
                "device": p.device,
                "gateway": batch.gateway,
                "kind": p.kind,
                "unit": p.unit,
                "area": p.area,
                "position": p.position,
                "value": p.value,
                "quality": p.quality,
                "reason": p.reason,
                "ts_ns": p.ts_ns,
            }
            for p in newest.values()
        ]
        with self._begin() as conn:
            conn.execute(self._latest_upsert, rows)
        return len(rows)

    def record_gap(self, ev: wire.GapEvent) -> None:
        """Add the telemetry a gateway had to drop to its ``dropped`` count."""
        with self._begin() as conn:
            self._record_gap(conn, ev, _utcnow())

    def _record_gap(self, conn: Connection, ev: wire.GapEvent, now: dt.datetime) -> None:
        gw = _GATEWAYS
        conn.execute(
            self._insert(gw)
            .values(
                gateway=ev.gateway, site=ev.site, state="unknown", gaps=0, dropped=0, version=""
            )
            .on_conflict_do_nothing()
        )
        conn.execute(
            gw.update()
            .where(gw.c.gateway == ev.gateway)
            .values(dropped=gw.c.dropped + ev.dropped, last_seen=now)
        )

    def record_status(self, st: wire.GatewayStatus) -> bool:
        """Set online/offline unless a newer status is already stored; True if applied."""
        with self._begin() as conn:
            return self._record_status(conn, st, _utcnow())

    def _record_status(self, conn: Connection, st: wire.GatewayStatus, now: dt.datetime) -> bool:
        gw = _GATEWAYS
        stmt = self._insert(gw).values(
            gateway=st.gateway,
            site=st.site,
            state=st.state,
            status_ts_ns=st.ts_ns,
            version=st.version,
            gaps=0,
            dropped=0,
            last_seen=now,
        )
        upsert = stmt.on_conflict_do_update(
            index_elements=["gateway"],
            set_={
                "site": stmt.excluded.site,
                "state": stmt.excluded.state,
                "status_ts_ns": stmt.excluded.status_ts_ns,
                "version": stmt.excluded.version,
                "last_seen": stmt.excluded.last_seen,
            },
            where=gw.c.status_ts_ns.is_(None) | (gw.c.status_ts_ns <= stmt.excluded.status_ts_ns),
        ).returning(gw.c.gateway)
        return conn.execute(upsert).first() is not None

    # -- the ingest's batches -------------------------------------------------------------

    def seen_many(self, pairs: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of the (gateway, seq) pairs were already processed (one query per gateway)."""
        by_gateway: dict[str, list[int]] = {}
        for gateway, seq in pairs:
            by_gateway.setdefault(gateway, []).append(seq)
        if not by_gateway:
            return set()
        seen = _SEEN
        found: set[tuple[str, int]] = set()
        with self._begin() as conn:
            for gateway, seqs in by_gateway.items():
                rows = conn.execute(
                    sa.select(seen.c.seq).where(seen.c.gateway == gateway, seen.c.seq.in_(seqs))
                ).scalars()
                found.update((gateway, seq) for seq in rows)
        return found

    def commit_batch(self, commit: BatchCommit) -> list[bool]:
        """Make one ingest batch durable in one transaction; for each alarm, whether it was new.

        Raises :class:`StoreError` and then nothing of the batch is stored.
        """
        now = _utcnow()
        new_alarms: list[bool] = []
        with self._begin() as conn:
            if commit.seqs:
                # The seq marks go first: on SQLite the first write takes the write lock,
                # so the gateway rows read below cannot change under us.
                conn.execute(
                    self._insert(_SEEN).on_conflict_do_nothing(),
                    [{"gateway": g, "seq": q} for g, _site, q in commit.seqs],
                )
                sites = {g: site for g, site, _q in commit.seqs}
                conn.execute(
                    self._insert(_GATEWAYS).on_conflict_do_nothing(),
                    [
                        {
                            "gateway": g,
                            "site": site,
                            "state": "unknown",
                            "gaps": 0,
                            "dropped": 0,
                            "version": "",
                        }
                        for g, site in sites.items()
                    ],
                )
                conn.execute(
                    self._advance_seq,
                    [
                        {"b_gw": g, "b_site": site, "b_seq": q, "b_now": now}
                        for g, site, q in commit.seqs
                    ],
                )
                self._since_prune += len(commit.seqs)
                if self._since_prune >= _PRUNE_EVERY:
                    self._since_prune = 0
                    for gateway in sites:
                        newest = max(q for g, _s, q in commit.seqs if g == gateway)
                        conn.execute(
                            _SEEN.delete().where(
                                _SEEN.c.gateway == gateway, _SEEN.c.seq < newest - SEEN_SEQ_WINDOW
                            )
                        )
            if commit.replaced:  # before the new dead letters: a replay may fail again
                conn.execute(_DEAD.delete().where(_DEAD.c.id.in_(commit.replaced)))
            if commit.dead_letters:
                conn.execute(
                    self._dead_letter_upsert,
                    [
                        {
                            "received_at": now,
                            "topic": d.topic,
                            "payload": d.payload,
                            "reason": d.reason,
                            "detail": d.detail,
                            "digest": _digest(d.topic, d.payload),
                            "copies": 1,
                        }
                        for d in commit.dead_letters
                    ],
                )
            new_alarms = [self._record_alarm(conn, ev, now) for ev in commit.alarms]
            for gap in commit.gaps:
                self._record_gap(conn, gap, now)
            for status in commit.statuses:
                self._record_status(conn, status, now)
            if commit.latest:
                conn.execute(self._latest_upsert, commit.latest)
            if commit.spool:
                lines = commit.spool
                conn.execute(
                    _SPOOL.insert(),
                    [
                        {
                            "lines": "\n".join(lines[i : i + SPOOL_CHUNK_LINES]),
                            "points": len(lines[i : i + SPOOL_CHUNK_LINES]),
                            "spooled_at": now,
                        }
                        for i in range(0, len(lines), SPOOL_CHUNK_LINES)
                    ],
                )
        return new_alarms

    def spool_take(self, max_points: int) -> list[SpoolChunk]:
        """The oldest spooled chunks, up to about ``max_points`` lines (at least one chunk)."""
        taken: list[SpoolChunk] = []
        total = 0
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(_SPOOL.c.id, _SPOOL.c.lines, _SPOOL.c.points)
                .order_by(_SPOOL.c.id)
                .limit(max(1, max_points // SPOOL_CHUNK_LINES + 1))
            ).all()
        for row in rows:
            if taken and total + row.points > max_points:
                break
            taken.append(SpoolChunk(row.id, row.lines.split("\n")))
            total += row.points
        return taken

    def spool_delete(self, ids: Sequence[int]) -> None:
        """Forget spooled chunks InfluxDB has answered for."""
        if ids:
            with self._begin() as conn:
                conn.execute(_SPOOL.delete().where(_SPOOL.c.id.in_(list(ids))))

    def spool_points(self) -> int:
        """Lines waiting in the spool."""
        with self._begin() as conn:
            total = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(_SPOOL.c.points), 0))
            ).scalar()
        return int(total or 0)

    def dead_letters(
        self,
        *,
        limit: int = 100,
        reason: str | None = None,
        ids: Sequence[int] | None = None,
        after_id: int = 0,
        up_to_id: int | None = None,
    ) -> list[DeadLetterRecord]:
        """Dead letters, oldest first (ids above ``after_id``, up to ``up_to_id``)."""
        query = sa.select(_DEAD).where(_DEAD.c.id > after_id)
        if up_to_id is not None:
            query = query.where(_DEAD.c.id <= up_to_id)
        query = query.order_by(_DEAD.c.id).limit(max(0, limit))
        if reason is not None:
            query = query.where(_DEAD.c.reason == reason)
        if ids is not None:
            query = query.where(_DEAD.c.id.in_(list(ids)))
        with self._begin() as conn:
            rows = conn.execute(query).all()
        return [
            DeadLetterRecord(
                id=r.id,
                received_at=_aware(r.received_at) or _utcnow(),
                topic=r.topic,
                payload=bytes(r.payload),
                reason=r.reason,
                detail=r.detail,
                copies=r.copies,
            )
            for r in rows
        ]

    def newest_dead_letter_id(self) -> int:
        with self._begin() as conn:
            return int(conn.execute(sa.select(sa.func.max(_DEAD.c.id))).scalar() or 0)

    def dead_letter_count(self) -> int:
        with self._begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_DEAD)).scalar() or 0)

    # -- reads ----------------------------------------------------------------------------

    def alarms(
        self,
        site: str | None = None,
        gateway: str | None = None,
        level: str | None = None,
        limit: int = 100,
    ) -> list[AlarmRecord]:
        """Alarm changes, newest first (by gateway timestamp, then arrival)."""
        table = _ALARMS
        query = sa.select(table)
        if site is not None:
            query = query.where(table.c.site == site)
        if gateway is not None:
            query = query.where(table.c.gateway == gateway)
        if level is not None:
            query = query.where(table.c.level == level)
        query = query.order_by(table.c.ts_ns.desc(), table.c.id.desc()).limit(max(0, limit))
        with self._begin() as conn:
            rows: Sequence[sa.Row[Any]] = conn.execute(query).all()
        return [
            AlarmRecord(
                id=r.id,
                gateway=r.gateway,
                site=r.site,
                seq=r.seq,
                alarm_id=r.alarm_id,
                tag=r.tag,
                device=r.device,
                kind=r.kind,
                area=r.area,
                position=r.position,
                level=r.level,
                previous=r.previous,
                value=r.value,
                threshold=r.threshold,
                ts_ns=r.ts_ns,
                message=r.message,
                actuators=list(r.actuators or []),
                received_at=_aware(r.received_at) or _utcnow(),
                reason=r.reason or "",
                console=r.console or "",
            )
            for r in rows
        ]

    def latest(self, site: str) -> list[LatestValue]:
        """The newest value of every tag of ``site``, sorted by tag."""
        table = _LATEST
        query = sa.select(table).where(table.c.site == site).order_by(table.c.tag)
        with self._begin() as conn:
            rows = conn.execute(query).all()
        return [LatestValue(**r._mapping) for r in rows]  # columns == fields

    def conditions(self, site: str) -> dict[str, str]:
        """Each tag's condition as its gateway decided it: the level of the newest alarm event
        of the tag's own kind (rule-type events such as ``diagnosis`` or ``notice`` are not the
        tag's process condition). Tags with no such event are absent (normal)."""
        a, lv = _ALARMS, _LATEST
        own_kind = sa.and_(lv.c.site == a.c.site, lv.c.tag == a.c.tag, lv.c.kind == a.c.kind)
        newest = (
            sa.select(a.c.tag, sa.func.max(a.c.ts_ns).label("ts"))
            .join(lv, own_kind)
            .where(a.c.site == site)
            .group_by(a.c.tag)
            .subquery()
        )
        query = (
            sa.select(a.c.tag, a.c.level)
            .join(newest, sa.and_(a.c.tag == newest.c.tag, a.c.ts_ns == newest.c.ts))
            .where(a.c.site == site)
            .order_by(a.c.id)
        )
        with self._begin() as conn:
            return {r.tag: r.level for r in conn.execute(query)}

    def latest_states(self, site: str) -> list[tuple[str, str, str, str, str]]:
        """(tag, area, gateway, kind, quality) of every tag of ``site`` with a latest value:
        what the risk heatmap needs, without building a :class:`LatestValue` per tag."""
        lv = _LATEST
        query = sa.select(lv.c.tag, lv.c.area, lv.c.gateway, lv.c.kind, lv.c.quality).where(
            lv.c.site == site
        )
        with self._begin() as conn:
            return [(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(query)]

    def change_marker(self, site: str) -> tuple[object, ...]:
        """A cheap summary that changes when what the risk heatmap reads of ``site`` may
        have changed - written by any process: the newest alarm event, the number of tags
        and of tags not in good quality, the gateways' states. Three small queries."""
        a, lv, gw = _ALARMS, _LATEST, _GATEWAYS
        not_good = sa.func.sum(sa.case((lv.c.quality != "good", 1), else_=0))
        with self._begin() as conn:
            newest_alarm = conn.execute(sa.select(sa.func.max(a.c.id))).scalar()
            tags, bad = conn.execute(
                sa.select(sa.func.count(), not_good).where(lv.c.site == site)
            ).one()
            states = conn.execute(
                sa.select(gw.c.gateway, gw.c.state).where(gw.c.site == site).order_by(gw.c.gateway)
            ).all()
        return (newest_alarm, tags, bad or 0, tuple((g, st) for g, st in states))

    def newest_conditions(self, site: str) -> list[TagCondition]:
        """The level of the newest alarm event of every (tag, kind) of ``site`` - normal
        ones too - whether or not the tag has a latest value (by gateway timestamp, then
        arrival, as :meth:`conditions`)."""
        a = _ALARMS
        newest_first = sa.func.row_number().over(
            partition_by=(a.c.tag, a.c.kind), order_by=(a.c.ts_ns.desc(), a.c.id.desc())
        )
        ranked = (
            sa.select(a.c.tag, a.c.kind, a.c.area, a.c.level, newest_first.label("n"))
            .where(a.c.site == site)
            .subquery()
        )
        query = (
            sa.select(ranked.c.tag, ranked.c.kind, ranked.c.area, ranked.c.level)
            .where(ranked.c.n == 1)
            .order_by(ranked.c.tag, ranked.c.kind)
        )
        with self._begin() as conn:
            return [TagCondition(r.tag, r.kind, r.area, r.level) for r in conn.execute(query)]

    def gateways(self) -> list[GatewayRecord]:
        table = _GATEWAYS
        with self._begin() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.site, table.c.gateway)).all()
        return [
            GatewayRecord(
                gateway=r.gateway,
                site=r.site,
                state=r.state,
                last_seq=r.last_seq,
                gaps=r.gaps,
                dropped=r.dropped,
                last_seen=_aware(r.last_seen),
                version=r.version,
            )
            for r in rows
        ]

    def sites(self) -> set[str]:
        """Every site known from latest values or gateways."""
        lv = _LATEST
        gw = _GATEWAYS
        with self._begin() as conn:
            found = conn.execute(sa.select(lv.c.site).union(sa.select(gw.c.site))).scalars()
            return set(found)


def _digest(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode("utf-8", "surrogateescape") + b"\0" + payload).hexdigest()


def _advance_seq_statement() -> sa.Update:
    """Move a gateway's ``last_seq`` forward and keep ``gaps`` (run as executemany, one row
    per new seq in arrival order). Seqs are < 2**63 (the wire bounds them), so the
    arithmetic stays in 64-bit integers."""
    gw = _GATEWAYS
    last = gw.c.last_seq
    seq = sa.bindparam("b_seq", type_=sa.BigInteger)
    return (
        gw.update()
        .where(gw.c.gateway == sa.bindparam("b_gw"))
        .values(
            gaps=sa.case(
                (last.is_(None), gw.c.gaps),
                (last < seq, gw.c.gaps + (seq - last - 1)),
                (gw.c.gaps > 0, gw.c.gaps - 1),
                else_=gw.c.gaps,
            ),
            last_seq=sa.case((last.is_(None) | (last < seq), seq), else_=last),
            site=sa.bindparam("b_site"),
            last_seen=sa.bindparam("b_now"),
        )
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()
