"""The risk service: live factors from the store and the hazards, the heatmap, grade history."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloud.hazards import HazardGrade, HazardService
from cloud.risk._grading import RiskGrade
from cloud.risk._model import AreaRisk, LiveFactors, RiskModel, compute, load_risk_file
from cloud.storage import Store, StoreError

__all__ = ["GradeChange", "RiskBase", "RiskService"]


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
    ) -> None:
        self.engine = engine
        self.model = model
        self.store = store
        self.hazards = hazards
        self._last: dict[str, RiskGrade] | None = None
        self._lock = threading.Lock()

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
        """Active alarms and faults, offline gateways and open hazards, by area."""
        live = LiveFactors()
        areas = {a.id for a in self.model.areas}
        site = self.model.site
        if self.store is not None and site:
            conditions = self.store.conditions(site)
            offline = {
                g.gateway for g in self.store.gateways() if g.site == site and g.state == "offline"
            }
            offline_areas: set[tuple[str, str]] = set()
            for value in self.store.latest(site):
                if value.area not in areas:
                    continue
                level = conditions.get(value.tag, "normal")
                if level in ("alarm", "cut", "fault"):
                    live.add(value.area, level, value.tag)
                elif value.quality != "good":
                    live.add(value.area, "fault", value.tag)
                if value.gateway in offline:
                    offline_areas.add((value.area, value.gateway))
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
        return live

    def heatmap(self, *, record: bool = True) -> list[AreaRisk]:
        """Recompute every area; with ``record``, keep the areas whose grade changed."""
        areas = compute(self.model, self.live_factors())
        if record:
            self._record(areas)
        return areas

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
