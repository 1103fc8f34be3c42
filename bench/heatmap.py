"""``safewatch bench heatmap``: recompute the live heatmap of 1,000 risk units.

A fresh SQLite store holds the live picture a busy site would have: latest values of
every monitored tag (a share in alarm, cut or fault), open hazards (some major, some
overdue). Each run is a full :meth:`RiskService.heatmap` - reading the factors from
the database, grading every unit, recording changed grades - timed with perf_counter.
The baseline in the same run is the pure grading (:func:`compute`) on the same factors.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench._harness import percentile
from cloud import migrations
from cloud.audit import AuditLog
from cloud.hazards import HazardGrade, HazardIn, HazardService
from cloud.risk import RiskModel, RiskService, compute
from cloud.storage import Store
from cloud.storage.db import Base


def _model(units: int, per_area: int) -> RiskModel:
    areas = []
    for a in range(max(1, units // per_area)):
        areas.append(
            {
                "id": f"area-{a}",
                "polygon": [[a, 0], [a + 1, 0], [a + 1, 1], [a, 1]],
                "units": [
                    {"id": f"u-{a}-{u}", "lec": {"l": 3, "e": 6, "c": 7}}
                    if u % 2
                    else {"id": f"u-{a}-{u}", "matrix": {"l": 1 + u % 5, "s": 1 + a % 5}}
                    for u in range(per_area)
                ],
            }
        )
    return RiskModel.model_validate({"site": "bench", "areas": areas})


def _fill(store: Store, hazards: HazardService, model: RiskModel, tags_per_area: int) -> None:
    tables = Base.metadata.tables
    now_ns = time.time_ns()
    latest: list[dict[str, Any]] = []
    alarms: list[dict[str, Any]] = []
    for i, area in enumerate(model.areas):
        for t in range(tags_per_area):
            tag = f"{area.id}.t{t}"
            bad = (i + t) % 17 == 0
            latest.append(
                {"site": "bench", "tag": tag, "device": "d", "gateway": f"gw-{i % 5}",
                 "kind": "ch4", "unit": "%", "area": area.id, "position": "", "value": 0.5,
                 "quality": "bad" if bad else "good", "reason": None, "ts_ns": now_ns}
            )  # fmt: skip
            if (i + t) % 13 == 0:
                alarms.append(
                    {"gateway": f"gw-{i % 5}", "site": "bench", "seq": len(alarms) + 1,
                     "alarm_id": tag, "tag": tag, "device": "d", "kind": "ch4", "area": area.id,
                     "position": "", "level": "cut" if t % 2 else "alarm", "previous": "normal",
                     "value": 1.6, "threshold": 1.5, "ts_ns": now_ns, "message": "",
                     "actuators": [], "received_at": dt.datetime.now(dt.UTC)}
                )  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(sa.insert(tables["latest_values"]), latest)
        if alarms:
            conn.execute(sa.insert(tables["alarm_events"]), alarms)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for i, area in enumerate(model.areas[::3]):
        grade = HazardGrade.MAJOR if i % 4 == 0 else HazardGrade.GENERAL
        deadline = past if i % 5 == 0 else None
        hazards.create(
            HazardIn(title="h", area=area.id, grade=grade, site="bench", deadline=deadline), "bench"
        )


def run(
    *, units: int = 1000, per_area: int = 10, tags_per_area: int = 20, rounds: int = 30
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="safewatch-bench-heatmap-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'heat.db'}")
        migrations.upgrade(store.engine)
        audit = AuditLog(store.engine)
        hazards = HazardService(store.engine, audit, Path(tmp) / "ev")
        model = _model(units, per_area)
        _fill(store, hazards, model, tags_per_area)
        risk = RiskService(store.engine, model, store=store, hazards=hazards)
        risk.heatmap()  # warm: first history rows, connection pool
        full, pure = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            areas = risk.heatmap()
            full.append((time.perf_counter() - t0) * 1000)
            live = risk.live_factors()
            t0 = time.perf_counter()
            compute(model, live)
            pure.append((time.perf_counter() - t0) * 1000)
        red = sum(1 for a in areas if a.grade.colour == "red")
        store.close()
    return {
        "units": model.unit_count,
        "areas": len(model.areas),
        "rounds": rounds,
        "recompute_ms": round(statistics.median(full), 2),
        "recompute_p99_ms": round(percentile(full, 99), 2),
        "grading_only_ms": round(statistics.median(pure), 2),
        "red_areas": red,
    }
