"""Automatic hazards for monitoring that has been blind for too long.

| what the ingest stored                                          | hazard kind        | grade   |
| a sensor's newest own-kind alarm event is ``fault`` (stale,     | sensor_offline     | general |
| not answering, bad quality) for longer than ``after``           |                    |         |
| a gateway's newest status is ``offline`` (its last will: comms  | monitoring_offline | major   |
| lost) for longer than ``after``                                 |                    |         |

A sweep (:meth:`OfflineHazards.sweep`, every ``after / 4`` at most a minute in the cloud
service) reads the state the ingest stored, so nothing is lost across a restart: a
sensor that went offline while the cloud was down is found by the first sweep after it.
De-duplicated like every automatic hazard: one open hazard per (kind, site, tag or
gateway); a sensor that comes back does not close it (people do, after a look).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import cast

import sqlalchemy as sa

from cloud.hazards._auto import AUTO_ACTOR
from cloud.hazards._lifecycle import HazardGrade
from cloud.hazards._service import HazardIn, HazardRecord, HazardService
from cloud.storage import StoreError
from cloud.storage.db import AlarmEventRow, GatewayRow, LatestValueRow

__all__ = ["DEFAULT_OFFLINE_AFTER", "OfflineHazards"]

log = logging.getLogger(__name__)

DEFAULT_OFFLINE_AFTER = dt.timedelta(minutes=10)

_ALARMS = cast(sa.Table, AlarmEventRow.__table__)
_LATEST = cast(sa.Table, LatestValueRow.__table__)
_GATEWAYS = cast(sa.Table, GatewayRow.__table__)


class OfflineHazards:
    """Opens ``sensor_offline`` / ``monitoring_offline`` hazards; blocking (call from a thread)."""

    def __init__(
        self,
        hazards: HazardService,
        *,
        after: dt.timedelta = DEFAULT_OFFLINE_AFTER,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if after <= dt.timedelta(0):
            raise ValueError(f"offline hazard delay must be positive, not {after}")
        self.hazards = hazards
        self.after = after
        self._clock_ns = clock_ns
        self.created = 0
        self.failures = 0

    @property
    def interval_s(self) -> float:
        """How often the cloud service sweeps: a quarter of the delay, at most a minute."""
        return min(60.0, self.after.total_seconds() / 4)

    def sweep(self) -> list[HazardRecord]:
        """Open a hazard for each sensor and gateway offline longer than ``after``."""
        cutoff = self._clock_ns() - int(self.after.total_seconds() * 1e9)
        minutes = round(self.after.total_seconds() / 60, 1)
        found: list[tuple[HazardIn, str]] = []
        try:
            with self.hazards.engine.connect() as conn:
                for r in conn.execute(_faulty_sensors(cutoff)):
                    where = f"{r.area or r.site} {r.position}".strip()
                    data = HazardIn(
                        title=f"Monitoring sensor offline over {minutes:g} min at {where} "
                        f"({r.tag})"[:256],
                        area=r.area or r.site,
                        grade=HazardGrade.GENERAL,
                        site=r.site,
                        kind="sensor_offline",
                        description=f"{r.message} (gateway {r.gateway}, {r.kind} sensor in "
                        f"fault since {_iso(r.ts_ns)})"[:4000],
                    )
                    found.append((data, f"sensor_offline:{r.site}:{r.tag}"))
                for g in conn.execute(_offline_gateways(cutoff)):
                    data = HazardIn(
                        title=f"Gateway {g.gateway} offline over {minutes:g} min: its "
                        "monitoring is blind"[:256],
                        area=g.site,
                        grade=HazardGrade.MAJOR,
                        site=g.site,
                        kind="monitoring_offline",
                        description=f"gateway {g.gateway} of site {g.site} reported offline "
                        f"(connection lost) at {_iso(g.status_ts_ns)}",
                    )
                    found.append((data, f"monitoring_offline:{g.site}:{g.gateway}"))
        except sa.exc.SQLAlchemyError as exc:
            self.failures += 1
            raise StoreError(f"offline hazards: {exc}") from exc
        created: list[HazardRecord] = []
        for data, key in found:
            try:
                record, new = self.hazards.create(
                    data, AUTO_ACTOR, source="auto", dedup_key=key[:256]
                )
            except StoreError:  # the next sweep tries again
                self.failures += 1
                log.exception("offline hazard %s not recorded", key)
                continue
            if new:
                self.created += 1
                created.append(record)
        return created


def _faulty_sensors(cutoff_ns: int) -> sa.Select[tuple[object, ...]]:
    """Tags whose newest own-kind alarm event (as in ``Store.conditions``) is a fault
    stamped before ``cutoff_ns``."""
    a, lv = _ALARMS, _LATEST
    own_kind = sa.and_(lv.c.site == a.c.site, lv.c.tag == a.c.tag, lv.c.kind == a.c.kind)
    newest = (
        sa.select(a.c.site, a.c.tag, sa.func.max(a.c.ts_ns).label("ts"))
        .join(lv, own_kind)
        .group_by(a.c.site, a.c.tag)
        .subquery()
    )
    return (
        sa.select(
            a.c.site, a.c.tag, a.c.gateway, a.c.area, a.c.position, a.c.kind, a.c.ts_ns, a.c.message
        )
        .join(
            newest,
            sa.and_(a.c.site == newest.c.site, a.c.tag == newest.c.tag, a.c.ts_ns == newest.c.ts),
        )
        .where(a.c.level == "fault", a.c.ts_ns <= cutoff_ns)
        .order_by(a.c.id)
    )


def _offline_gateways(cutoff_ns: int) -> sa.Select[tuple[object, ...]]:
    g = _GATEWAYS
    return (
        sa.select(g.c.gateway, g.c.site, g.c.status_ts_ns)
        .where(g.c.state == "offline", g.c.status_ts_ns <= cutoff_ns)
        .order_by(g.c.gateway)
    )


def _iso(ts_ns: int | None) -> str:
    if ts_ns is None:
        return "an unknown time"
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).isoformat(timespec="seconds")
