"""InfluxV1Writer against the real InfluxDB 1.x: round trip, rejections, server down."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

import wire
from cloud.storage import InfluxUnavailable, InfluxV1Writer, to_lines
from tests.support import async_wait_until, free_port

pytestmark = pytest.mark.contract

T0 = 1_700_000_000_123_456_789


def query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """Rows of the first series as dicts (epoch=ns timestamps)."""
    r = httpx.post(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"})
    r.raise_for_status()
    result = r.json()["results"][0]
    rows: list[dict[str, Any]] = []
    for series in result.get("series", []):
        for values in series["values"]:
            rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


async def test_batch_round_trips_with_escaped_tags_and_strings(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    points = [
        wire.Point(
            tag="CH4 101",
            device="gas,1",
            kind="ch4",
            unit="%",
            area="panel=3",
            position="face",
            value=1.25,
            quality="good",
            ts_ns=T0,
        ),
        wire.Point(
            tag="CH4 101",
            device="gas,1",
            kind="ch4",
            unit="%",
            area="panel=3",
            position="face",
            value=None,
            quality="bad",
            ts_ns=T0 + 1,
            reason='no reply from "unit 1" \\ retry',
        ),
        wire.Point(
            tag="O2-1",
            device="gas-3",
            kind="o2",
            unit="%vol",
            area="panel=3",
            position="return",
            value=20.9,
            quality="good",
            ts_ns=T0 + 2,
        ),
    ]
    batch = wire.TelemetryBatch(gateway="gw-1", site="north mine", seq=1, sent_ns=T0, points=points)
    writer = InfluxV1Writer(url, db, batch_lines=2)
    try:
        result = await writer.write(to_lines(batch))  # two requests of 2 and 1 lines
    finally:
        await writer.aclose()
    assert (result.written, result.refused) == (3, 0)
    assert writer.counters()["written"] == 3

    ch4 = query(url, db, 'SELECT * FROM "ch4" ORDER BY time')
    assert [(r["time"], r["value"], r["quality"], r["reason"]) for r in ch4] == [
        (T0, 1.25, "good", None),
        (T0 + 1, None, "bad", 'no reply from "unit 1" \\ retry'),
    ]
    first = ch4[0]
    assert (
        first["tag"],
        first["device"],
        first["area"],
        first["site"],
        first["gateway"],
        first["position"],
        first["unit"],
    ) == ("CH4 101", "gas,1", "panel=3", "north mine", "gw-1", "face", "%")
    (o2,) = query(url, db, 'SELECT value, "unit", "position" FROM "o2"')
    assert (o2["time"], o2["value"], o2["unit"], o2["position"]) == (T0 + 2, 20.9, "%vol", "return")


async def test_field_type_conflict_is_rejected_and_counted_with_influx_message(
    influx_db: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, db = influx_db
    writer = InfluxV1Writer(url, db)
    try:
        await writer.write([f"ch4,tag=T1 value=1.0 {T0}"])
        result = await writer.write(
            [f'ch4,tag=T1 value="text" {T0 + 1}', f"ch4,tag=T1 value=2.0 {T0 + 2}"]
        )
    finally:
        await writer.aclose()
    assert (result.written, result.refused) == (1, 1)  # from InfluxDB's partial-write answer
    assert "field type conflict" in result.error
    counters = writer.counters()
    assert counters["rejected"] == 1
    assert counters["written"] == 2
    assert "field type conflict" in caplog.text
    assert [r["value"] for r in query(url, db, 'SELECT value FROM "ch4"')] == [1.0, 2.0]


async def test_ensure_database_creates_once_and_is_idempotent() -> None:
    url = "http://127.0.0.1:8086"
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    writer = InfluxV1Writer(url, name)
    try:
        assert await writer.ping()
        await writer.ensure_database()
        await writer.ensure_database()
        names = query(url, name, "SHOW DATABASES")
        assert {"name": name} in names
    finally:
        await writer.aclose()
        query(url, name, f'DROP DATABASE "{name}"')


async def test_influx_down_is_unavailable_and_nothing_counts_as_written() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    writer = InfluxV1Writer(closed, "nowhere", retry_attempts=2, retry_wait_max_s=0.01)
    try:
        lines = [f"ch4,tag=T{i} value={i}.0 {T0 + i}" for i in range(10)]
        with pytest.raises(InfluxUnavailable):
            await writer.write(lines)  # the caller keeps the lines (the ingest spools them)
        assert await writer.ping() is False
    finally:
        await writer.aclose()
    assert writer.counters()["unavailable"] == 1
    assert "written" not in writer.counters()
    assert not writer.reachable


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _start_proxy(port: int, target_port: int) -> asyncio.Server:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target_port: InfluxDB 'coming back'."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_run_reports_reachable_only_once_influx_is_back(
    influx_db: tuple[str, str],
) -> None:
    url, db = influx_db
    port = free_port()
    writer = InfluxV1Writer(f"http://127.0.0.1:{port}", db, retry_attempts=1)
    lines = [f"ch4,tag=T1 value=3.5 {T0}", f"ch4,tag=T1 value=4.5 {T0 + 1}"]
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(writer.run(), name="influx-health")
        with pytest.raises(InfluxUnavailable):
            await writer.write(lines)
        assert not writer.reachable
        proxy = await _start_proxy(port, int(url.rsplit(":", 1)[1]))
        try:
            await async_wait_until(lambda: writer.reachable, 40, "a ping through the proxy")
            assert (await writer.write(lines)).written == 2
        finally:
            task.cancel()
            proxy.close()
    await writer.aclose()
    assert writer.counters()["written"] == 2
    assert [r["value"] for r in query(url, db, 'SELECT value FROM "ch4"')] == [3.5, 4.5]
