"""load_influx reads back what the cloud's InfluxDB writer stored (real InfluxDB 1.x)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import wire
from cloud.storage import to_lines
from simulators.synthetic import HistoryError, load_influx

pytestmark = pytest.mark.contract

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _point(tag: str, value: float | None, ts_ns: int) -> wire.Point:
    return wire.Point(
        tag=tag,
        device="ch4-1201-t1",
        kind="ch4",
        unit="%",
        area="1201 face",
        position="face",
        value=value,
        quality="good" if value is not None else "bad",
        ts_ns=ts_ns,
    )


def test_a_tag_written_by_the_cloud_writer_loads_as_a_history(
    influx_db: tuple[str, str],
) -> None:
    url, db = influx_db
    values = [0.30, 0.32, None, 0.35, 0.41]
    points = [_point("CH4_1201_T1", v, T0 + i * 10_000_000_000) for i, v in enumerate(values)]
    points.append(_point("CH4_OTHER", 0.9, T0))
    batch = wire.TelemetryBatch(gateway="gw-1", site="demo", seq=1, sent_ns=T0, points=points)
    r = httpx.post(
        f"{url}/write", params={"db": db, "precision": "ns"}, content="\n".join(to_lines(batch))
    )
    r.raise_for_status()

    h = load_influx(
        url,
        db,
        kind="ch4",
        tag="CH4_1201_T1",
        start="2025-12-31T00:00:00Z",
        end="2026-01-02T00:00:00Z",
        unit="%",
    )
    assert h.values.tolist() == [0.30, 0.32, 0.35, 0.41]  # the bad point has no value
    assert np.allclose(np.diff(h.t_s), [10, 20, 10])
    assert h.t_s[0] == T0 / 1e9
    assert (h.tag, h.kind, h.unit) == ("CH4_1201_T1", "ch4", "%")


def test_influx_errors_name_the_query(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    with pytest.raises(HistoryError, match=r"db .* query .*no samples"):
        load_influx(url, db, kind="ch4", tag="NOPE")
    with pytest.raises(HistoryError, match=r"influx http://127\.0\.0\.1:9"):
        load_influx("http://127.0.0.1:9", db, kind="ch4", tag="X", timeout_s=2)
