"""The risk service: live factors from the store and the hazards, the heatmap, grade history."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloud._encoded import EncodedBody
from cloud.hazards import HazardGrade, HazardService
from cloud.risk._grading import RiskGrade
from cloud.risk._model import AreaRisk, LiveFactors, RiskModel, compute, load_risk_file
from cloud.storage import BatchCommit, Store, StoreError

__all__ = ["GradeChange", "HeatmapSnapshot", "RiskBase", "RiskService"]

log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RiskBase(DeclarativeBase):
    pass


class GradeHistoryRow(RiskBase):
    """One row per change of an area's live grade: a day can be replayed from these."""

    __tablename__ = "risk_grade_history"
    __table_args__ = (sa.Index("ix_risk_grade_history_area_at", "area", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    area: Mapped[str] = mapped_column(sa.String(256))
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    grade: Mapped[str] = mapped_column(sa.String(16))
    points: Mapped[float] = mapped_column(sa.Float)
    contributions: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)


_HISTORY = cast(sa.Table, GradeHistoryRow.__table__)


_ACTIVE = {"alarm": 1, "fault": 2, "cut": 3}  # active levels, worse is higher
# Events that are not a tag's condition: operator actions, notices, flood summaries.
_NOT_A_CONDITION = frozenset({"alarm_state", "notice", "flood"})


def _factor(kind: str, level: str) -> str:
    """The factor of an active alarm: a model's pre-alarm counts as a forecast."""
    return "forecast" if kind == "forecast" else level


def _signature(area: str, gateway: str, kind: str, quality: str) -> tuple[str, str, str, bool]:
    return (area, gateway, kind, quality == "good")


@dataclass(frozen=True, slots=True)
class HeatmapSnapshot:
    """One computed heatmap as served: the areas, the JSON body and its ETag."""

    site: str
    at: dt.datetime  # when it was computed
    computed: float  # time.monotonic() of the same moment
    areas: list[AreaRisk]
    body: EncodedBody  # GET /api/v1/risk/heatmap's answer (HeatmapOut), also gzipped
    etag: str  # weak: the digest of the areas (not of ``at``)


def _area_document(a: AreaRisk) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "polygon": a.polygon,
        "static_grade": a.static_grade.colour,
        "grade": a.grade.colour,
        "points": a.points,
        "contributions": [
            {"factor": c.factor, "detail": c.detail, "points": c.points} for c in a.contributions
        ],
        "units": [
            {
                "id": u.id,
                "name": u.name,
                "method": u.method,
                "score": u.score,
                "static_grade": u.static_grade.colour,
                "grade": u.grade.colour,
            }
            for u in a.units
        ],
    }


def _make_snapshot(site: str, areas: list[AreaRisk]) -> HeatmapSnapshot:
    at = _utcnow()
    documents = [_area_document(a) for a in areas]
    content = json.dumps(documents, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]
    head = json.dumps({"configured": True, "site": site, "at": at.isoformat()})
    body = EncodedBody.of(f'{head[:-1]},"areas":{content}}}'.encode())
    return HeatmapSnapshot(site, at, time.monotonic(), areas, body, f'W/"{digest}"')


@dataclass(frozen=True, slots=True)
class GradeChange:
    area: str
    at: dt.datetime
    grade: str
    points: float
    contributions: list[dict[str, Any]]


class RiskService:
    """Risk units of one site (``model``) over the cloud store and the hazards."""

    def __init__(
        self,
        engine: Engine,
        model: RiskModel,
        *,
        store: Store | None = None,
        hazards: HazardService | None = None,
        min_interval_s: float = 1.0,
        max_age_s: float = 10.0,
        stale_s: float = 30.0,
    ) -> None:
        if not 0 < min_interval_s <= max_age_s:
            raise ValueError(
                f"heatmap refresh: need 0 < min_interval_s ({min_interval_s}) "
                f"<= max_age_s ({max_age_s})"
            )
        self.engine = engine
        self.model = model
        self.store = store
        self.hazards = hazards
        self._last: dict[str, RiskGrade] | None = None
        self._lock = threading.Lock()
        # The served snapshot (see keep_fresh): recomputed when an input changes, at most
        # every min_interval_s, and at least every max_age_s; a request never recomputes
        # unless nothing has refreshed it for stale_s.
        self.min_interval_s = min_interval_s
        self.max_age_s = max_age_s
        self.stale_s = max(stale_s, max_age_s)
        self._compute_lock = threading.Lock()
        self._snapshot: HeatmapSnapshot | None = None
        self._dirty = True
        # when the snapshot was last known current (computed, or the inputs' marker unchanged)
        self._verified = 0.0
        self._marker: tuple[object, ...] | None = None
        # tag -> (area, gateway, kind, good) of the latest values the last recompute read
        self._seen: dict[str, tuple[str, str, str, bool]] = {}
        if hazards is not None:
            hazards.listeners.append(self.invalidate)  # created, regraded, moved on

    @classmethod
    def from_file(cls, engine: Engine, path: Path, **kw: Any) -> RiskService:
        return cls(engine, load_risk_file(path), **kw)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"risk: {exc}") from exc

    def create_all(self) -> None:
        with self._begin() as conn:
            RiskBase.metadata.create_all(conn)

    def live_factors(self) -> LiveFactors:
        """Active alarms and faults, forecasts, offline gateways and open hazards, by area."""
        live = LiveFactors()
        areas = {a.id for a in self.model.areas}
        site = self.model.site
        seen: dict[str, tuple[str, str, str, bool]] = {}
        if self.store is not None and site:
            newest = self.store.newest_conditions(site)
            level_of = {(c.tag, c.kind): c.level for c in newest}
            offline = {
                g.gateway for g in self.store.gateways() if g.site == site and g.state == "offline"
            }
            offline_areas: set[tuple[str, str]] = set()
            for tag, area, gateway, kind, quality in sorted(self.store.latest_states(site)):
                seen[tag] = _signature(area, gateway, kind, quality)
                if area not in areas:
                    continue
                # the tag's condition as its gateway decided it: its own kind's newest event
                level = level_of.get((tag, kind), "normal")
                if level in _ACTIVE:
                    live.add(area, _factor(kind, level), tag)
                elif quality != "good":
                    live.add(area, "fault", tag)
                if gateway in offline:
                    offline_areas.add((area, gateway))
            # Active alarms of tags with no latest value (never sent a value, an actuator,
            # a feedback input judged by its rule): the event's own area; the worst per tag.
            unvalued: dict[str, tuple[int, str, str]] = {}
            for c in newest:
                if (
                    c.tag in seen
                    or c.level not in _ACTIVE
                    or c.kind in _NOT_A_CONDITION
                    or c.area not in areas
                ):
                    continue
                rank = _ACTIVE[c.level]
                held = unvalued.get(c.tag)
                if held is None or rank > held[0]:
                    unvalued[c.tag] = (rank, c.area, _factor(c.kind, c.level))
            for tag, (_, area, factor) in sorted(unvalued.items()):
                live.add(area, factor, tag)
            for area, gateway in sorted(offline_areas):
                live.add(area, "gateway_offline", gateway)
        if self.hazards is not None:
            for hazard in self.hazards.open_hazards():
                if hazard.area not in areas or (site and hazard.site not in ("", site)):
                    continue
                major = hazard.grade == HazardGrade.MAJOR
                live.add(
                    hazard.area,
                    "hazard_major" if major else "hazard_general",
                    f"hazard:{hazard.id}",
                )
                if hazard.overdue:
                    live.add(hazard.area, "hazard_overdue", f"hazard:{hazard.id}")
        self._seen = seen
        return live

    def heatmap(self, *, record: bool = True) -> list[AreaRisk]:
        """Recompute every area now; with ``record``, keep the areas whose grade changed.

        The result also becomes the served :meth:`snapshot`."""
        with self._compute_lock:
            return self._recompute(record)

    def _recompute(self, record: bool) -> list[AreaRisk]:
        self._dirty = False  # a change from here on is seen by the next recompute
        marker = self.change_marker()  # before reading: a change meanwhile shows next time
        areas = compute(self.model, self.live_factors())
        if record:
            self._record(areas)
        self._snapshot = _make_snapshot(self.model.site, areas)
        self._marker = marker
        self._verified = self._snapshot.computed
        return areas

    def change_marker(self) -> tuple[object, ...]:
        """What the inputs look like, cheaply (a few aggregate queries, ~1-2 ms): when it
        differs from the last recompute's, something this service reads has changed -
        also when another process wrote it, or a hazard's deadline passed."""
        store = None if self.store is None or not self.model.site else self.store
        return (
            None if store is None else store.change_marker(self.model.site),
            None if self.hazards is None else self.hazards.change_marker(),
        )

    def refresh(self) -> bool:
        """Recompute when due or when the inputs' marker changed; whether it recomputed.
        Blocking (the refresher calls it from a thread every ``min_interval_s``)."""
        with self._compute_lock:
            if not self.due():
                marker = self.change_marker()
                if marker == self._marker:
                    self._verified = time.monotonic()
                    return False
            self._recompute(True)
            return True

    # -- the served snapshot ---------------------------------------------------------------

    def invalidate(self, *_: object) -> None:
        """An input changed (an alarm, a hazard, a gateway status): recompute soon.
        Safe from any thread (a flag; :meth:`keep_fresh` looks at it)."""
        self._dirty = True

    def note_batch(self, commit: BatchCommit) -> None:
        """What one ingest batch stored (called on the ingest's loop: cheap): alarm events
        and gateway statuses make the heatmap stale; so does a new tag, or a change of a
        tag's quality, area, gateway or kind - a new value alone does not."""
        if commit.alarms or commit.statuses:
            self._dirty = True
            return
        seen = self._seen
        site = self.model.site
        for row in commit.latest:
            if row["site"] != site:
                continue
            known = seen.get(row["tag"])
            if known != _signature(row["area"], row["gateway"], row["kind"], row["quality"]):
                self._dirty = True
                return

    def current(self) -> HeatmapSnapshot | None:
        """The snapshot to serve now without waiting, or None when a refresh is due
        (then call :meth:`snapshot` from a thread)."""
        snap = self._snapshot
        if snap is None or self.due():
            return None
        return snap

    def snapshot(self) -> HeatmapSnapshot:
        """The served heatmap, recomputed first when due (blocking; raises StoreError).

        While another caller recomputes, the current snapshot is served at once unless it
        was last confirmed more than ``stale_s`` ago (then this caller waits for the new one)."""
        snap = self._snapshot
        if snap is not None and not self.due():
            return snap
        wait = snap is None or time.monotonic() - self._verified > self.stale_s
        if not self._compute_lock.acquire(blocking=wait):
            assert snap is not None
            return snap
        try:
            if self._snapshot is None or self.due():  # not done meanwhile by another caller
                self._recompute(True)
            assert self._snapshot is not None
            return self._snapshot
        finally:
            self._compute_lock.release()

    def due(self) -> bool:
        """Whether a recompute is due without looking at the database: this process
        changed an input (and ``min_interval_s`` has passed since the last recompute), or
        nothing has confirmed the snapshot for ``max_age_s`` (no refresher running, or the
        database failing it)."""
        snap = self._snapshot
        if snap is None:
            return True
        now = time.monotonic()
        if now - self._verified >= self.max_age_s:
            return True
        return self._dirty and now - snap.computed >= self.min_interval_s

    async def keep_fresh(self) -> None:
        """Every ``min_interval_s``: recompute when this process changed an input, or when
        the inputs' marker (:meth:`change_marker`) moved - another process's alarm, a
        gateway going offline, a hazard turning overdue; otherwise only confirm the
        snapshot (a few cheap queries: a recompute holds the GIL for tens of ms, stalling
        the API in the same process). Runs until cancelled; a failure is logged and tried
        again: requests keep the old snapshot for ``max_age_s``, then recompute themselves
        (503 while the database is down) - a wall never shows an old picture as live."""
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except StoreError as exc:
                (log.debug if failing else log.warning)("heatmap refresh failed: %s", exc)
                failing = True
            except Exception:  # a bug in one refresh never stops the cloud service
                log.exception("heatmap refresh failed")
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.min_interval_s)

    def _record(self, areas: list[AreaRisk]) -> None:
        with self._lock:
            if self._last is None:
                self._last = self._latest_recorded()
            changed = [a for a in areas if self._last.get(a.id) != a.grade]
            if not changed:
                return
            now = _utcnow()
            rows = [
                {
                    "area": a.id,
                    "at": now,
                    "grade": a.grade.colour,
                    "points": a.points,
                    "contributions": [
                        {"factor": c.factor, "detail": c.detail, "points": c.points}
                        for c in a.contributions
                    ],
                }
                for a in changed
            ]
            with self._begin() as conn:
                conn.execute(sa.insert(_HISTORY), rows)
            for a in changed:
                self._last[a.id] = a.grade

    def _latest_recorded(self) -> dict[str, RiskGrade]:
        newest = (
            sa.select(_HISTORY.c.area, sa.func.max(_HISTORY.c.id).label("id"))
            .group_by(_HISTORY.c.area)
            .subquery()
        )
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(_HISTORY.c.area, _HISTORY.c.grade).join(
                    newest, newest.c.id == _HISTORY.c.id
                )
            ).all()
        return {r.area: RiskGrade[r.grade.upper()] for r in rows}

    def history(
        self, area: str | None = None, *, since: dt.datetime | None = None, limit: int = 1000
    ) -> list[GradeChange]:
        query = sa.select(_HISTORY)
        if area is not None:
            query = query.where(_HISTORY.c.area == area)
        if since is not None:
            if since.tzinfo is not None:
                with contextlib.suppress(OverflowError):  # year 1 / 9999 with an offset
                    since = since.astimezone(dt.UTC)
            query = query.where(_HISTORY.c.at >= since)
        with self._begin() as conn:
            rows = conn.execute(query.order_by(_HISTORY.c.id).limit(limit)).all()
        return [
            GradeChange(
                r.area,
                r.at if r.at.tzinfo else r.at.replace(tzinfo=dt.UTC),
                r.grade,
                r.points,
                list(r.contributions),
            )
            for r in rows
        ]
