"""ISA-18.2 alarm lifecycle on the gateway: identity, states, operator actions.

The *process condition* (normal / alarm / cut / fault) belongs to the safety
engine; this module keeps the *alarm state* beside it, one alarm per
``(rule, tag)``:

* a stable ``alarm_id`` from the moment the condition first leaves normal until
  the alarm is back in ``normal`` (condition cleared **and** acknowledged): level
  changes in between (alarm -> cut, a restart...) keep the id;
* the ISA-18.2 states ``unacknowledged``, ``acknowledged``,
  ``returned_unacknowledged``, ``normal``, ``shelved`` (with expiry),
  ``out_of_service`` and ``suppressed`` (by design: chattering), driven by a
  python-statemachine model (:class:`AlarmLifecycle`);
* a priority from the grade (cut/fault/alarm) and the consequence (whether the
  tag's profile is fail-safe, i.e. interlocked) of the condition.

Everything lives in one SQLite file next to the gateway's state file (WAL,
one short transaction per change), so a restarted gateway finds its alarms as
they were: an active alarm stays the same alarm and is not announced as new.
The CLI (``safewatch alarms ...``) opens the same file, so a gateway cut off from
the cloud accepts operator actions locally; the running gateway forwards every
operator action (CLI or signed cloud command) as an alarm event from the
``history`` table (rows not yet ``forwarded``).

Shelving, taking out of service and suppression never touch the interlock:
cuts act whatever the alarm state; only annunciation (and notification) is held.
"""

from __future__ import annotations

import collections
import contextlib
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

import wire
from edge.config import LoadedSite
from wire.alarm_kpi import alarm_kpis, console_kpis

__all__ = [
    "ACTIONS",
    "STATES",
    "Action",
    "AlarmActionError",
    "AlarmForwarder",
    "AlarmLifecycle",
    "AlarmRecord",
    "AlarmStore",
    "ChatterPolicy",
    "FloodDetector",
    "alarm_db_path",
    "alarm_key",
    "kpis",
    "priority_of",
    "shelve_stamp",
]

NORMAL: Final = "normal"
UNACK: Final = "unacknowledged"
ACK: Final = "acknowledged"
RTN_UNACK: Final = "returned_unacknowledged"
SHELVED: Final = "shelved"
OOS: Final = "out_of_service"
SUPPRESSED: Final = "suppressed"
STATES: Final = (NORMAL, UNACK, ACK, RTN_UNACK, SHELVED, OOS, SUPPRESSED)

# operator actions (CLI, API, signed command) -> state-machine event
ACTIONS: Final = {
    "acknowledge": "acknowledge",
    "shelve": "shelve",
    "unshelve": "unshelve",
    "out_of_service": "remove",
    "return_to_service": "restore",
}
# how long a shelve lasts when the operator names no expiry, and the longest allowed
DEFAULT_SHELVE_S: Final = 8 * 3600.0
MAX_SHELVE_S: Final = 7 * 24 * 3600.0

_ACTIVE_LEVELS: Final = frozenset({"alarm", "cut", "fault"})
# kinds that report maintenance or advice rather than the process itself
_MAINTENANCE_KINDS: Final = frozenset(
    {"diagnosis", "notice", "actuator", "feedback", "forecast", "stuck", "spike", "drift"}
)


class AlarmActionError(ValueError):
    """An operator action that cannot be applied (unknown alarm, forbidden transition)."""


class _Model:
    """What the state machine reads and writes: the state value and the active flag."""

    def __init__(self, state: str, active: bool) -> None:
        self.state = state
        self.active = active


class AlarmLifecycle(StateMachine):
    """The ISA-18.2 alarm state model (without latching alarms).

    ``activate``/``clear`` come from the process condition; ``acknowledge``,
    ``shelve``, ``unshelve``, ``remove`` (out of service), ``restore`` (return
    to service) from operators; ``suppress``/``unsuppress`` from the design
    logic (chattering). Leaving shelved / out of service / suppressed returns to
    ``unacknowledged`` when the condition is active, else to ``normal``.
    """

    normal = State(value=NORMAL, initial=True)
    unacknowledged = State(value=UNACK)
    acknowledged = State(value=ACK)
    returned_unacknowledged = State(value=RTN_UNACK)
    shelved = State(value=SHELVED)
    out_of_service = State(value=OOS)
    suppressed = State(value=SUPPRESSED)

    activate = (
        normal.to(unacknowledged)
        | returned_unacknowledged.to(unacknowledged)
        | unacknowledged.to(unacknowledged)
        | acknowledged.to(acknowledged)
        | shelved.to(shelved)
        | out_of_service.to(out_of_service)
        | suppressed.to(suppressed)
    )
    clear = (
        unacknowledged.to(returned_unacknowledged)
        | acknowledged.to(normal)
        | shelved.to(shelved)
        | out_of_service.to(out_of_service)
        | suppressed.to(suppressed)
    )
    acknowledge = unacknowledged.to(acknowledged) | returned_unacknowledged.to(normal)
    shelve = (
        normal.to(shelved)
        | unacknowledged.to(shelved)
        | acknowledged.to(shelved)
        | returned_unacknowledged.to(shelved)
    )
    unshelve = shelved.to(unacknowledged, cond="is_active") | shelved.to(normal, unless="is_active")
    remove = (
        normal.to(out_of_service)
        | unacknowledged.to(out_of_service)
        | acknowledged.to(out_of_service)
        | returned_unacknowledged.to(out_of_service)
        | shelved.to(out_of_service)
        | suppressed.to(out_of_service)
    )
    restore = out_of_service.to(unacknowledged, cond="is_active") | out_of_service.to(
        normal, unless="is_active"
    )
    suppress = (
        normal.to(suppressed)
        | unacknowledged.to(suppressed)
        | acknowledged.to(suppressed)
        | returned_unacknowledged.to(suppressed)
    )
    unsuppress = suppressed.to(unacknowledged, cond="is_active") | suppressed.to(
        normal, unless="is_active"
    )

    def is_active(self) -> bool:
        return bool(getattr(self.model, "active", False))


def step(state: str, active: bool, event: str) -> str:
    """The state after ``event`` from ``state`` (``active`` is the condition *after*
    the event); raises :class:`TransitionNotAllowed` when the model forbids it."""
    model = _Model(state, active)
    machine = AlarmLifecycle(model)
    machine.send(event)
    return str(model.state)


def shelve_stamp(ts_ns: int) -> str:
    """A shelve's expiry as an alarm_state message says it: UTC, ISO 8601, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ns // 10**9))


def alarm_key(rule_id: str, tag: str) -> str:
    return f"{rule_id}|{tag}"


def priority_of(level: str, kind: str, fail_safe: bool) -> str:
    """Priority from the grade (level) and the consequence (interlocked or advisory)."""
    if kind in _MAINTENANCE_KINDS:
        return "low"
    if level == "cut":
        return "critical" if fail_safe else "high"
    if level == "fault":
        return "high" if fail_safe else "medium"
    if level == "alarm":
        return "high" if fail_safe else "medium"
    return "low"


def alarm_db_path(state_path: str | Path) -> Path:
    """The alarm database beside the gateway's state file."""
    state = Path(state_path)
    return state.with_name(f"{state.stem}-alarms.sqlite")


@dataclass(slots=True)
class AlarmRecord:
    key: str
    rule_id: str
    tag: str
    alarm_id: str
    state: str
    active: bool
    level: str
    priority: str
    kind: str
    shelved_until_ns: int | None
    reason: str
    since_ns: int
    updated_ns: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "alarm_id": self.alarm_id,
            "rule": self.rule_id,
            "tag": self.tag,
            "state": self.state,
            "active": self.active,
            "level": self.level,
            "priority": self.priority,
            "kind": self.kind,
            "shelved_until_ns": self.shelved_until_ns,
            "reason": self.reason,
            "since_ns": self.since_ns,
            "updated_ns": self.updated_ns,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change of an alarm (the ``history`` table)."""

    id: int
    ts_ns: int
    alarm_id: str
    rule_id: str
    tag: str
    state: str
    previous_state: str
    action: str
    actor: str
    why: str
    level: str
    priority: str


@dataclass(frozen=True, slots=True)
class Action:
    """One audited operator action on the gateway other than an alarm action
    (calibration, latch reset, lockout test, config deploy): the ``actions`` table."""

    id: int
    ts_ns: int
    actor: str
    action: str
    target: str
    why: str


@dataclass(slots=True)
class ChatterPolicy:
    """``transitions`` activations within ``window_s`` make an alarm chattering: it is
    suppressed by design (annunciation only; cuts still act) and released by an
    operator (``unshelve``) or after ``hold_s`` without a new activation.

    ``tags`` holds per-tag settings (``transitions, window_s, hold_s``) from the site
    file (tag, then profile ``chatter:``; see :meth:`from_site`); others use the defaults.
    """

    transitions: int = 5
    window_s: float = 60.0
    hold_s: float = 600.0
    tags: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    _seen: dict[str, collections.deque[int]] = field(default_factory=dict)

    @classmethod
    def from_site(cls, site: LoadedSite) -> ChatterPolicy:
        default = site.config.alarms.chatter
        tags: dict[str, tuple[int, float, float]] = {}
        for _device, tag in site.tags():
            got = site.chatter_of(tag)
            if got != default:
                tags[tag.name] = (got.transitions, got.window_s, got.hold_s)
        return cls(default.transitions, default.window_s, default.hold_s, tags)

    def limits(self, key: str) -> tuple[int, float, float]:
        """(transitions, window_s, hold_s) of the alarm ``rule|tag``."""
        tag = key.rsplit("|", 1)[-1]
        return self.tags.get(tag, (self.transitions, self.window_s, self.hold_s))

    def note(self, key: str, ts_ns: int) -> bool:
        """Record an activation; True when the alarm now chatters."""
        transitions, window_s, _hold = self.limits(key)
        seen = self._seen.get(key)
        if seen is None or seen.maxlen != transitions:
            seen = self._seen[key] = collections.deque(seen or (), maxlen=transitions)
        seen.append(ts_ns)
        return len(seen) >= transitions and ts_ns - seen[0] <= window_s * 1e9


@dataclass(slots=True)
class FloodDetector:
    """An alarm flood: more than ``per_minute`` raises within one minute.

    :meth:`note` is told of every raise and answers True for the raise that starts a
    flood; :meth:`check` (called every second or so) answers True when the flood is
    over, i.e. the raises of the trailing minute have stayed at or below the limit
    for ``clear_s``. ``flood_id`` stays the same from start to end (one summary alarm),
    ``during`` counts the raises of the flood (every one of them is still recorded).
    """

    per_minute: int = 10
    clear_s: float = 60.0
    flood_id: str = ""
    since_ns: int | None = None  # None: no flood now
    started_ns: int = 0  # when the latest flood started
    during: int = 0
    peak: int = 0
    _raises: collections.deque[int] = field(default_factory=collections.deque)
    _calm_since_ns: int | None = None

    @property
    def active(self) -> bool:
        return self.since_ns is not None

    def rate(self, now_ns: int) -> int:
        """Raises within the minute up to ``now_ns``."""
        while self._raises and self._raises[0] <= now_ns - 60 * 10**9:
            self._raises.popleft()
        return len(self._raises)

    def note(self, ts_ns: int) -> bool:
        self._raises.append(ts_ns)
        rate = self.rate(ts_ns)
        if self.since_ns is not None:
            self.during += 1
            self.peak = max(self.peak, rate)
            if rate > self.per_minute:
                self._calm_since_ns = None
            return False
        if rate <= self.per_minute:
            return False
        self.since_ns = self.started_ns = ts_ns
        self.flood_id = uuid.uuid4().hex
        self.during, self.peak, self._calm_since_ns = rate, rate, None
        return True

    def check(self, now_ns: int) -> bool:
        if self.since_ns is None:
            return False
        if self.rate(now_ns) > self.per_minute:
            self._calm_since_ns = None
            return False
        if self._calm_since_ns is None:
            self._calm_since_ns = now_ns
        if now_ns - self._calm_since_ns < self.clear_s * 1e9:
            return False
        self.since_ns = None
        return True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    key TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    alarm_id TEXT NOT NULL,
    state TEXT NOT NULL,
    active INTEGER NOT NULL,
    level TEXT NOT NULL,
    priority TEXT NOT NULL,
    kind TEXT NOT NULL,
    shelved_until_ns INTEGER,
    reason TEXT NOT NULL,
    since_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ix_alarms_id ON alarms(alarm_id);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns INTEGER NOT NULL,
    alarm_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    state TEXT NOT NULL,
    previous_state TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    why TEXT NOT NULL,
    level TEXT NOT NULL,
    priority TEXT NOT NULL,
    forwarded INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_history_ts ON history(ts_ns);
CREATE INDEX IF NOT EXISTS ix_history_pending ON history(forwarded) WHERE forwarded = 0;
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    why TEXT NOT NULL,
    forwarded INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_actions_pending ON actions(forwarded) WHERE forwarded = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "key, rule_id, tag, alarm_id, state, active, level, priority, kind, "
    "shelved_until_ns, reason, since_ns, updated_ns"
)


def _record(row: tuple[Any, ...]) -> AlarmRecord:
    return AlarmRecord(
        key=row[0],
        rule_id=row[1],
        tag=row[2],
        alarm_id=row[3],
        state=row[4],
        active=bool(row[5]),
        level=row[6],
        priority=row[7],
        kind=row[8],
        shelved_until_ns=row[9],
        reason=row[10],
        since_ns=row[11],
        updated_ns=row[12],
    )


class AlarmStore:
    """The gateway's alarm states and their history in SQLite.

    Safe to open from the gateway and the CLI at once: every change is one
    ``BEGIN IMMEDIATE`` transaction that reads the row, runs the state machine and
    writes the row and its history entry.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], int] = time.time_ns,
        chatter: ChatterPolicy | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self.chatter = chatter
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise AlarmActionError(f"alarm database {self.path}: {exc}") from exc
        self.errors = 0
        # what the latest on_condition did: raise, clear, change (a level change or a
        # condition re-reported after a restart: the same alarm, not announced again)
        self.last_action = ""

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------

    def get(self, ref: str) -> AlarmRecord | None:
        """An alarm by its id, its ``rule|tag`` key, or its tag (when one rule watches it)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE alarm_id = ? OR key = ? OR tag = ?",
            (ref, ref, ref),
        ).fetchall()
        exact = [r for r in rows if ref in (r[0], r[3])]
        if exact:
            return _record(exact[0])
        if len(rows) == 1:
            return _record(rows[0])
        if len(rows) > 1:
            raise AlarmActionError(
                f"alarm {ref!r} is ambiguous: {', '.join(r[0] for r in rows)}; name rule|tag"
            )
        return None

    def alarms(self, *, include_normal: bool = False) -> list[AlarmRecord]:
        where = "" if include_normal else "WHERE state != 'normal'"
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM alarms {where} ORDER BY key").fetchall()
        return [_record(r) for r in rows]

    def history(self, since_ns: int = 0, until_ns: int | None = None) -> list[Change]:
        until = until_ns if until_ns is not None else 2**63 - 1
        rows = self._db.execute(
            "SELECT id, ts_ns, alarm_id, rule_id, tag, state, previous_state, action, actor, "
            "why, level, priority FROM history WHERE ts_ns >= ? AND ts_ns < ? ORDER BY id",
            (since_ns, until),
        ).fetchall()
        return [Change(*r) for r in rows]

    def pending(self, limit: int = 500) -> list[Change]:
        """Operator actions not yet forwarded to the cloud, oldest first."""
        rows = self._db.execute(
            "SELECT id, ts_ns, alarm_id, rule_id, tag, state, previous_state, action, actor, "
            "why, level, priority FROM history WHERE forwarded = 0 ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [Change(*r) for r in rows]

    def mark_forwarded(self, ids: list[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE history SET forwarded = 1 WHERE id = ?", [(i,) for i in ids])

    # -- the process condition ---------------------------------------------------

    def on_condition(
        self,
        rule_id: str,
        tag: str,
        level: str,
        *,
        kind: str,
        fail_safe: bool,
        reason: str,
        ts_ns: int,
    ) -> AlarmRecord:
        """Apply one change of the engine's condition; the alarm as it now is.

        A new ``alarm_id`` is drawn only when an alarm in ``normal`` becomes
        active; a condition that is already active (e.g. re-reported after a
        restart) keeps the id and the state (an acknowledged alarm stays
        acknowledged: no re-announcement).
        """
        key = alarm_key(rule_id, tag)
        active = level in _ACTIVE_LEVELS
        with self._tx() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM alarms WHERE key = ?", (key,)).fetchone()
            rec = _record(row) if row is not None else None
            self.last_action = "change"
            if rec is None:
                if not active:  # a rule reporting normal that never alarmed
                    return AlarmRecord(
                        key, rule_id, tag, "", NORMAL, False, level, "low", kind, None, reason,
                        ts_ns, ts_ns,
                    )  # fmt: skip
                rec = AlarmRecord(
                    key, rule_id, tag, uuid.uuid4().hex, NORMAL, False, level,
                    priority_of(level, kind, fail_safe), kind, None, reason, ts_ns, ts_ns,
                )  # fmt: skip
                db.execute(
                    f"INSERT INTO alarms ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, rule_id, tag, rec.alarm_id, NORMAL, 0, level, rec.priority, kind,
                     None, reason, ts_ns, ts_ns),
                )  # fmt: skip
            previous = rec.state
            was_active = rec.active
            if active and rec.state == NORMAL and not was_active and row is not None:
                rec.alarm_id = uuid.uuid4().hex  # the previous alarm is over: a new one
                rec.since_ns = ts_ns
            if active == was_active and rec.state != NORMAL:
                action = "change"  # alarm -> cut, or re-reported after a restart
            else:
                event = "activate" if active else "clear"
                action = "raise" if active else "clear"
                try:
                    rec.state = step(rec.state, active, event)
                except TransitionNotAllowed:  # e.g. cleared while already normal
                    action = "change"
            rec.active = active
            rec.level = level
            if active:
                rec.priority = priority_of(level, kind, fail_safe)
            rec.kind = kind
            rec.reason = reason
            rec.updated_ns = ts_ns
            if (
                action == "raise"
                and self.chatter is not None
                and rec.state not in (SHELVED, OOS, SUPPRESSED)
                and self.chatter.note(key, ts_ns)
            ):
                self._write(db, rec, previous, "raise", "gateway", reason, forwarded=True)
                previous = rec.state
                rec.state = step(rec.state, active, "suppress")
                rec.reason = "chattering"
                self._write(
                    db,
                    rec,
                    previous,
                    "suppress",
                    "gateway",
                    f"chattering: {self.chatter.limits(key)[0]} activations within "
                    f"{self.chatter.limits(key)[1]:g} s; suppressed by design (cuts still act)",
                    forwarded=False,
                )
                self.last_action = "raise"
                return rec
            self._write(db, rec, previous, action, "gateway", reason, forwarded=True)
            self.last_action = action
            return rec

    # -- operators -----------------------------------------------------------------

    def act(
        self,
        ref: str,
        action: str,
        *,
        actor: str,
        why: str = "",
        shelve_s: float | None = None,
    ) -> AlarmRecord:
        """Apply an operator action (``acknowledge``, ``shelve``, ``unshelve``,
        ``out_of_service``, ``return_to_service``); raises :class:`AlarmActionError`."""
        event = ACTIONS.get(action)
        if event is None:
            raise AlarmActionError(f"unknown alarm action {action!r}; one of {', '.join(ACTIONS)}")
        if not actor:
            raise AlarmActionError("an alarm action needs the operator's name")
        if action == "out_of_service" and not why.strip():
            raise AlarmActionError("out of service needs a reason")
        if action == "shelve":
            duration = DEFAULT_SHELVE_S if shelve_s is None else shelve_s
            if not 0 < duration <= MAX_SHELVE_S:
                raise AlarmActionError(
                    f"shelve duration {duration:g} s is not within 0..{MAX_SHELVE_S:g} s"
                )
        now = self._clock()
        with self._tx() as db:
            rec = self._locked_get(db, ref)
            previous = rec.state
            unsuppress = action == "unshelve" and rec.state == SUPPRESSED
            try:
                rec.state = step(rec.state, rec.active, "unsuppress" if unsuppress else event)
            except TransitionNotAllowed as exc:
                raise AlarmActionError(
                    f"alarm {rec.key} ({rec.alarm_id}) cannot be {action}d from state {previous}"
                ) from exc
            rec.shelved_until_ns = (
                now + int((DEFAULT_SHELVE_S if shelve_s is None else shelve_s) * 1e9)
                if action == "shelve"
                else None
            )
            rec.updated_ns = now
            self._write(db, rec, previous, action, actor, why, forwarded=False, ts_ns=now)
            return rec

    # -- the gateway's own audit of operator actions ------------------------------------

    def record_action(self, action: str, *, actor: str, target: str, why: str = "") -> Action:
        """Audit one operator action on the gateway (who, when, what, why); the running
        gateway forwards it to the cloud's audit chain."""
        now = self._clock()
        actor = actor or "unknown"
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO actions (ts_ns, actor, action, target, why, forwarded) "
                "VALUES (?,?,?,?,?,0)",
                (now, actor[:128], action[:64], target[:128], why[:500]),
            )
            return Action(int(cur.lastrowid or 0), now, actor[:128], action[:64], target[:128],
                          why[:500])  # fmt: skip

    def actions(self, *, pending_only: bool = False, limit: int = 500) -> list[Action]:
        where = "WHERE forwarded = 0" if pending_only else ""
        rows = self._db.execute(
            f"SELECT id, ts_ns, actor, action, target, why FROM actions {where} ORDER BY id "
            "LIMIT ?",
            (limit,),
        ).fetchall()
        return [Action(*r) for r in rows]

    def mark_actions_forwarded(self, ids: list[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE actions SET forwarded = 1 WHERE id = ?", [(i,) for i in ids])

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def escalated(self, alarm_id: str, route: str) -> bool:
        """Whether this alarm was escalated along ``route`` already."""
        row = self._db.execute(
            "SELECT 1 FROM history WHERE alarm_id = ? AND action = 'escalate' AND actor = ?",
            (alarm_id, route),
        ).fetchone()
        return row is not None

    def record_escalation(self, rec: AlarmRecord, route: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO history (ts_ns, alarm_id, rule_id, tag, state, previous_state, "
                "action, actor, why, level, priority, forwarded) "
                "VALUES (?,?,?,?,?,?,'escalate',?,?,?,?,1)",
                (self._clock(), rec.alarm_id, rec.rule_id, rec.tag, rec.state, rec.state, route,
                 "unacknowledged past the route's escalation time", rec.level, rec.priority),
            )  # fmt: skip

    def expire_shelves(self) -> list[AlarmRecord]:
        """Unshelve every alarm whose shelve has run out, and release chattering alarms
        quiet for the chatter policy's ``hold_s`` (the gateway calls this)."""
        now = self._clock()
        done: list[AlarmRecord] = []
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM alarms WHERE state = ? AND shelved_until_ns <= ?",
                (SHELVED, now),
            ).fetchall()
            for row in rows:
                rec = _record(row)
                previous = rec.state
                rec.state = step(rec.state, rec.active, "unshelve")
                rec.shelved_until_ns = None
                rec.updated_ns = now
                self._write(
                    db, rec, previous, "shelve_expired", "gateway", "shelve ran out",
                    forwarded=False, ts_ns=now,
                )  # fmt: skip
                done.append(rec)
            if self.chatter is not None:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM alarms WHERE state = ?", (SUPPRESSED,)
                ).fetchall()
                for row in rows:
                    rec = _record(row)
                    if rec.updated_ns > now - int(self.chatter.limits(rec.key)[2] * 1e9):
                        continue  # not quiet for its hold time yet
                    previous = rec.state
                    rec.state = step(rec.state, rec.active, "unsuppress")
                    rec.updated_ns = now
                    self._write(
                        db, rec, previous, "unsuppress", "gateway", "no longer chattering",
                        forwarded=False, ts_ns=now,
                    )  # fmt: skip
                    done.append(rec)
        return done

    def _locked_get(self, db: sqlite3.Connection, ref: str) -> AlarmRecord:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE alarm_id = ? OR key = ? OR tag = ?",
            (ref, ref, ref),
        ).fetchall()
        exact = [r for r in rows if ref in (r[0], r[3])]
        if exact:
            return _record(exact[0])
        if len(rows) == 1:
            return _record(rows[0])
        if len(rows) > 1:
            raise AlarmActionError(
                f"alarm {ref!r} is ambiguous: {', '.join(r[0] for r in rows)}; name rule|tag"
            )
        raise AlarmActionError(f"no alarm {ref!r} on this gateway")

    def _write(
        self,
        db: sqlite3.Connection,
        rec: AlarmRecord,
        previous: str,
        action: str,
        actor: str,
        why: str,
        *,
        forwarded: bool,
        ts_ns: int | None = None,
    ) -> None:
        db.execute(
            "UPDATE alarms SET alarm_id=?, state=?, active=?, level=?, priority=?, kind=?, "
            "shelved_until_ns=?, reason=?, since_ns=?, updated_ns=? WHERE key=?",
            (rec.alarm_id, rec.state, int(rec.active), rec.level, rec.priority, rec.kind,
             rec.shelved_until_ns, rec.reason, rec.since_ns, rec.updated_ns, rec.key),
        )  # fmt: skip
        db.execute(
            "INSERT INTO history (ts_ns, alarm_id, rule_id, tag, state, previous_state, action, "
            "actor, why, level, priority, forwarded) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.updated_ns if ts_ns is None else ts_ns, rec.alarm_id, rec.rule_id, rec.tag,
             rec.state, previous, action, actor, why[:500], rec.level, rec.priority,
             int(forwarded)),
        )  # fmt: skip


# -- KPIs (EEMUA 191 / ISA-18.2) ----------------------------------------------------


def kpis(
    history: list[Change],
    start_ns: int,
    end_ns: int,
    *,
    operators: int = 1,
    flood_per_10min: int = 10,
    chatter: ChatterPolicy | None = None,
    standing: list[AlarmRecord] | None = None,
    stale_s: float = 24 * 3600.0,
    consoles: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Alarm-rate figures (:func:`wire.alarm_kpi.alarm_kpis`) from the recorded changes:
    an alarm counts when it is raised and annunciated (not while shelved, out of service
    or suppressed); suppressions by design count as chattering. ``consoles`` maps tags to
    their operator console (:meth:`LoadedSite.console_of`): ``consoles`` in the answer has
    the figures per console (a tag not in the map: console ``gateway``)."""
    policy = chatter or ChatterPolicy()
    raised = [c for c in history if c.action == "raise" and c.state == UNACK]
    console_of = consoles or {}
    figures = alarm_kpis(
        [(c.ts_ns, f"{c.rule_id}|{c.tag}") for c in raised],
        start_ns,
        end_ns,
        operators=operators,
        flood_per_10min=flood_per_10min,
        chatter_transitions=policy.transitions,
        chatter_window_s=policy.window_s,
        suppressed=[
            f"{c.rule_id}|{c.tag}"
            for c in history
            if c.action == "suppress" and start_ns <= c.ts_ns < end_ns
        ],
        standing=[(r.key, r.since_ns) for r in standing or [] if r.active],
        stale_s=stale_s,
    )
    figures["consoles"] = console_kpis(
        [(c.ts_ns, f"{c.rule_id}|{c.tag}", console_of.get(c.tag, "gateway")) for c in raised],
        start_ns,
        end_ns,
        flood_per_10min=flood_per_10min,
    )
    return figures


# -- forwarding operator actions to the cloud ----------------------------------------


class AlarmForwarder:
    """Turns recorded operator/design changes into :class:`wire.AlarmEvent` messages
    (same ``alarm_id``, the new ISA state, who and why) for the durable outbox."""

    def __init__(
        self, site: LoadedSite, store: AlarmStore, sink: Callable[[wire.AlarmEvent], None]
    ) -> None:
        self._site_id = site.config.site.id
        self._gateway = site.config.gateway.id
        self._tags = {tag.name: (device, tag) for device, tag in site.tags()}
        self._console_of = site.console_of
        self._store = store
        self._sink = sink
        self.forwarded = 0

    def forward(self) -> int:
        """Expire shelves, then hand every pending change and audited action on; how many
        were sent."""
        self._store.expire_shelves()
        changes = self._store.pending()
        for change in changes:
            self._sink(self.event(change))
        if changes:
            self._store.mark_forwarded([c.id for c in changes])
            self.forwarded += len(changes)
        actions = self._store.actions(pending_only=True)
        for action in actions:
            self._sink(self.action_event(action))
        if actions:
            self._store.mark_actions_forwarded([a.id for a in actions])
            self.forwarded += len(actions)
        return len(changes) + len(actions)

    def action_event(self, action: Action) -> wire.AlarmEvent:
        """An audited gateway action as an event of kind ``operator_action`` (level normal:
        not an alarm); the cloud appends it to its audit chain (cloud/alarm_states.py)."""
        found = self._tags.get(action.target)
        device, area, position = (self._gateway, "gateway", "gateway")
        if found is not None:
            device, area, position = found[0].id, found[1].location.area, found[1].location.position
        target = action.target
        tag = target if _ID.fullmatch(target) and len(target) <= wire.ID_MAX_LEN else self._gateway
        why = f": {action.why}" if action.why else ""
        return wire.AlarmEvent(
            gateway=self._gateway,
            site=self._site_id,
            seq=0,
            alarm_id=f"action-{self._gateway}-{action.id}-{action.ts_ns}"[:64],
            tag=tag,
            device=device,
            kind="operator_action",
            area=area or "gateway",
            position=position or "gateway",
            level="normal",
            previous="normal",
            value=None,
            threshold=None,
            ts_ns=action.ts_ns,
            message=_clean(f"{action.action} {action.target} by {action.actor}{why}"),
            actuators=[],
            reason=f"action_{action.action}",
            actor=_clean(action.actor),
            console=self._console_of(area),
        )

    def event(self, change: Change) -> wire.AlarmEvent:
        found = self._tags.get(change.tag)
        device, area, position = ("", "", "")
        if found is not None:
            device, area, position = found[0].id, found[1].location.area, found[1].location.position
        level = change.level if change.level in ("normal", "alarm", "cut", "fault") else "alarm"
        who = f" by {change.actor}" if change.actor else ""
        why = f": {change.why}" if change.why else ""
        if change.action == "shelve":  # the expiry, for the walls: "... until <UTC ISO>"
            rec = self._store.get(change.alarm_id)
            if rec is not None and rec.state == SHELVED and rec.shelved_until_ns is not None:
                who += f" until {shelve_stamp(rec.shelved_until_ns)}"
        return wire.AlarmEvent(
            gateway=self._gateway,
            site=self._site_id,
            seq=0,
            alarm_id=change.alarm_id,
            tag=change.tag,
            device=device or self._gateway,
            kind="alarm_state",
            area=area or "gateway",  # never empty on the wire (rules on no known tag)
            position=position or "gateway",
            level=cast(wire.AlarmLevel, level),
            previous=cast(wire.AlarmLevel, level),
            value=None,
            threshold=None,
            ts_ns=change.ts_ns,
            message=_clean(
                f"{change.tag} (rule {change.rule_id}) {change.action}{who}{why}: "
                f"{change.previous_state} -> {change.state}"
            ),
            actuators=[],
            reason=f"alarm_{change.action}",
            state=change.state,
            priority=change.priority,
            actor=_clean(change.actor),
            console=self._console_of(area),
        )


_ID = re.compile(wire.ID_PATTERN)


def _clean(text: str) -> str:
    """Printable text within the wire's length limit."""
    return "".join(ch if ch.isprintable() else " " for ch in text)[:900]
