"""The relational store: alarm history, latest values, gateway state, seen sequence numbers.

SQLAlchemy 2 (sync engine); SQLite by default (WAL mode), PostgreSQL in production.
Every write is idempotent: alarms are unique on (gateway, seq), latest values only
move forward in time, and ``note_seq`` remembers which (gateway, seq) were already
processed in the ``seen_seq`` table so duplicates are recognised after a restart.
Blocking: call from a worker thread (``asyncio.to_thread``) in async code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import wire
from cloud.storage._errors import StoreError

__all__ = [
    "AlarmRecord",
    "Base",
    "GatewayRecord",
    "LatestValue",
    "Store",
]

# How many sequence numbers below a gateway's newest one stay remembered in seen_seq;
# older ones are pruned (alarms stay deduplicated by their own unique key anyway).
SEEN_SEQ_WINDOW = 100_000
_PRUNE_EVERY = 1000


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


_ALARMS = cast(sa.Table, AlarmEventRow.__table__)
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
class GatewayRecord:
    gateway: str
    site: str
    state: str
    last_seq: int | None
    gaps: int
    dropped: int
    last_seen: dt.datetime | None
    version: str


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class Store:
    """Alarm history, latest values and gateway bookkeeping on SQLite or PostgreSQL.

    ``schema`` (PostgreSQL) puts every table in that schema, e.g. for tests.
    Every method raises :class:`StoreError` when the database fails.
    """

    def __init__(self, url: str, *, schema: str | None = None, echo: bool = False) -> None:
        self.url = url
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
        self._insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._since_prune = 0

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.engine.url.render_as_string()}: {exc}") from exc

    def create_all(self) -> None:
        with self._begin() as conn:
            Base.metadata.create_all(conn)

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
                received_at=_utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["gateway", "seq"])
            .returning(table.c.id)
        )
        with self._begin() as conn:
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
        table = _LATEST
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
        stmt = self._insert(table).values(rows)
        updated = {name: stmt.excluded[name] for name in rows[0] if name not in ("site", "tag")}
        stmt = stmt.on_conflict_do_update(
            index_elements=["site", "tag"],
            set_=updated,
            where=table.c.ts_ns < stmt.excluded.ts_ns,
        )
        with self._begin() as conn:
            conn.execute(stmt)
        return len(rows)

    def record_gap(self, ev: wire.GapEvent) -> None:
        """Add the telemetry a gateway had to drop to its ``dropped`` count."""
        gw = _GATEWAYS
        with self._begin() as conn:
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
                .values(dropped=gw.c.dropped + ev.dropped, last_seen=_utcnow())
            )

    def record_status(self, st: wire.GatewayStatus) -> bool:
        """Set online/offline unless a newer status is already stored; True if applied."""
        gw = _GATEWAYS
        stmt = self._insert(gw).values(
            gateway=st.gateway,
            site=st.site,
            state=st.state,
            status_ts_ns=st.ts_ns,
            version=st.version,
            gaps=0,
            dropped=0,
            last_seen=_utcnow(),
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
        with self._begin() as conn:
            return conn.execute(upsert).first() is not None

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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()
