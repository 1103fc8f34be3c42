"""Append-only, hash-chained audit rows (see the package docstring)."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloud.storage import StoreError

T = TypeVar("T")

__all__ = [
    "GENESIS",
    "AuditAction",
    "AuditBase",
    "AuditEntry",
    "AuditLog",
    "ChainProblem",
    "VerifyReport",
    "entry_hash",
]

GENESIS = "0" * 64  # prev_hash of the first row
_PG_LOCK_KEY = 0x5AFE_A0D1  # pg_advisory_xact_lock key serialising appends
_MAX_DETAILS = 16_384  # bytes of canonical JSON kept per row; larger is summarised
_APPEND_ATTEMPTS = 100


class AuditAction(enum.StrEnum):
    """What happened. Other services may record further actions; these are the known ones."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGIN_RATE_LIMITED = "login_rate_limited"
    USER_ADDED = "user_added"
    USER_DISABLED = "user_disabled"
    USER_ENABLED = "user_enabled"
    USER_ROLE_CHANGED = "user_role_changed"
    PASSWORD_CHANGED = "password_changed"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"
    SIGNING_KEY_ADDED = "signing_key_added"
    SIGNING_KEY_RETIRED = "signing_key_retired"
    CONFIG_CHANGED = "config_changed"
    ALARM_ACKNOWLEDGED = "alarm_acknowledged"
    ALARM_SHELVED = "alarm_shelved"
    OVERRIDE = "override"
    CALIBRATION = "calibration"
    LOCKOUT_TEST = "lockout_test"
    HAZARD_TRANSITION = "hazard_transition"
    HAZARD_REMINDER = "hazard_reminder"
    HAZARD_ESCALATED = "hazard_escalated"
    BROKER_ACCOUNT_ADDED = "broker_account_added"


class AuditBase(DeclarativeBase):
    pass


class AuditRow(AuditBase):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    actor: Mapped[str] = mapped_column(sa.String(128))
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(256))
    details: Mapped[str] = mapped_column(sa.Text)  # canonical JSON, hashed as stored
    prev_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)


_AUDIT = cast(sa.Table, AuditRow.__table__)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at_ns: int
    actor: str
    action: str
    target: str
    details: str
    prev_hash: str
    hash: str

    @property
    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.at_ns / 1e9, dt.UTC)

    def details_dict(self) -> dict[str, Any]:
        value = json.loads(self.details)
        return value if isinstance(value, dict) else {"value": value}


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.message}"


@dataclass(slots=True)
class VerifyReport:
    rows: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(
    seq: int, at_ns: int, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str:
    """SHA-256 (hex) of one row's fields and its predecessor's hash, canonically encoded."""
    encoded = _canonical([seq, at_ns, actor, action, target, details, prev_hash])
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _raced(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return "locked" in text or "busy" in text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _details_text(details: Mapping[str, Any] | None) -> str:
    text = _canonical(dict(details or {}))
    if len(text) > _MAX_DETAILS:
        digest = hashlib.sha256(text.encode("ascii")).hexdigest()
        text = _canonical({"summarised": True, "bytes": len(text), "sha256": digest})
    return text


class AuditLog:
    """The audit table on a SQLAlchemy engine (the cloud store's). Blocking calls."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()  # one append at a time in this process

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"audit log: {exc}") from exc

    def create_all(self) -> None:
        with self._begin() as conn:
            AuditBase.metadata.create_all(conn)

    def record(
        self,
        actor: str,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one row at the head of the chain and return it.

        Raises :class:`StoreError` when the database fails (after retrying races).
        """
        actor, action, target = _clip(actor, 128), _clip(str(action), 64), _clip(target, 256)
        text = _details_text(details)
        with self._lock:
            for attempt in range(_APPEND_ATTEMPTS):
                try:
                    return self._append(actor, action, target, text)
                except (IntegrityError, OperationalError) as exc:
                    # Another process appended first (unique seq/prev_hash) or holds the
                    # SQLite write lock (a stale read snapshot): read the new head, retry.
                    if not _raced(exc) or attempt == _APPEND_ATTEMPTS - 1:
                        raise StoreError(f"audit log: append kept racing: {exc}") from exc
                    time.sleep(random.uniform(0.001, 0.005 * (attempt + 1)))
                except SQLAlchemyError as exc:
                    raise StoreError(f"audit log: {exc}") from exc
        raise AssertionError("unreachable")

    def _append(self, actor: str, action: str, target: str, details: str) -> AuditEntry:
        with self.engine.begin() as conn:
            return self._append_in(conn, actor, action, target, details)

    def _append_in(
        self, conn: Connection, actor: str, action: str, target: str, details: str
    ) -> AuditEntry:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
        head = conn.execute(
            sa.select(_AUDIT.c.seq, _AUDIT.c.hash).order_by(_AUDIT.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (1, GENESIS) if head is None else (int(head.seq) + 1, str(head.hash))
        at_ns = time.time_ns()
        digest = entry_hash(seq, at_ns, actor, action, target, details, prev)
        conn.execute(
            _AUDIT.insert().values(
                seq=seq,
                at_ns=at_ns,
                actor=actor,
                action=action,
                target=target,
                details=details,
                prev_hash=prev,
                hash=digest,
            )
        )
        return AuditEntry(seq, at_ns, actor, action, target, details, prev, digest)

    def append(
        self,
        conn: Connection,
        actor: str,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one row inside the caller's transaction ``conn``.

        The row commits or rolls back with the caller's own writes (a hazard and its
        audit row: both or neither). A racing append surfaces as IntegrityError or
        OperationalError when the caller's transaction ends: run the whole transaction
        through :meth:`atomic`, which starts it again.
        """
        actor, action, target = _clip(actor, 128), _clip(str(action), 64), _clip(target, 256)
        return self._append_in(conn, actor, action, target, _details_text(details))

    def atomic(self, work: Callable[[Connection], T], what: str = "audit log") -> T:
        """``work(conn)`` in one transaction, started again when an audit append raced.

        Raises :class:`StoreError` (naming ``what``) when the database fails; an
        exception ``work`` raises itself rolls the transaction back and propagates.
        """
        with self._lock:
            for attempt in range(_APPEND_ATTEMPTS):
                try:
                    with self.engine.begin() as conn:
                        return work(conn)
                except (IntegrityError, OperationalError) as exc:
                    if not _raced(exc) or attempt == _APPEND_ATTEMPTS - 1:
                        raise StoreError(f"{what}: {exc}") from exc
                    time.sleep(random.uniform(0.001, 0.005 * (attempt + 1)))
                except SQLAlchemyError as exc:
                    raise StoreError(f"{what}: {exc}") from exc
        raise AssertionError("unreachable")

    def entries(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        action: str | None = None,
        actor: str | None = None,
    ) -> list[AuditEntry]:
        """Rows newest first; ``before`` pages back from a sequence number."""
        query = sa.select(_AUDIT)
        if before is not None:
            query = query.where(_AUDIT.c.seq < before)
        if action is not None:
            query = query.where(_AUDIT.c.action == action)
        if actor is not None:
            query = query.where(_AUDIT.c.actor == actor)
        query = query.order_by(_AUDIT.c.seq.desc()).limit(max(0, limit))
        with self._begin() as conn:
            return [AuditEntry(**r._mapping) for r in conn.execute(query)]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest row; (0, GENESIS) when empty. Keep it outside the DB."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(_AUDIT.c.seq, _AUDIT.c.hash).order_by(_AUDIT.c.seq.desc()).limit(1)
            ).first()
        return (0, GENESIS) if row is None else (int(row.seq), str(row.hash))

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Walk the whole chain; report every row whose link or contents do not hold.

        ``anchor`` (a (seq, hash) noted earlier, e.g. by ``safewatch audit head``) also
        catches rows deleted from the end and a chain rewritten from some row onwards.
        """
        report = VerifyReport()
        expected_seq, prev = 1, GENESIS
        anchor_seen = False
        with self._begin() as conn:
            result = conn.execution_options(yield_per=1000).execute(
                sa.select(_AUDIT).order_by(_AUDIT.c.seq)
            )
            for r in result:
                row = AuditEntry(**r._mapping)
                prev_hash = row.prev_hash
                report.rows += 1
                if row.seq != expected_seq:
                    if row.seq > expected_seq:
                        missing = f"{expected_seq}" + (
                            f"-{row.seq - 1}" if row.seq - 1 > expected_seq else ""
                        )
                        report.problems.append(
                            ChainProblem(row.seq, f"row(s) {missing} missing (deleted)")
                        )
                    else:
                        report.problems.append(
                            ChainProblem(row.seq, f"out of order after seq {expected_seq - 1}")
                        )
                if row.prev_hash != prev:
                    report.problems.append(
                        ChainProblem(
                            row.seq,
                            "prev_hash does not match the hash of the row before it "
                            "(a row was deleted, inserted or rewritten)",
                        )
                    )
                computed = entry_hash(
                    row.seq, row.at_ns, row.actor, row.action, row.target, row.details, prev_hash
                )
                if computed != row.hash:
                    report.problems.append(
                        ChainProblem(row.seq, "contents do not match the row's hash (edited)")
                    )
                if anchor is not None and row.seq == anchor[0]:
                    anchor_seen = True
                    if row.hash != anchor[1]:
                        report.problems.append(
                            ChainProblem(row.seq, "hash differs from the anchor (chain rewritten)")
                        )
                expected_seq, prev = row.seq + 1, row.hash
                report.head_seq, report.head_hash = row.seq, row.hash
        if anchor is not None and anchor[0] > 0 and not anchor_seen:
            report.problems.append(
                ChainProblem(
                    anchor[0],
                    f"anchor row is gone: the chain ends at seq {report.head_seq} "
                    "(rows deleted from the end)",
                )
            )
        return report
