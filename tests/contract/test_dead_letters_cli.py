"""``safewatch cloud dead-letters list|replay`` on a SQLite store and the real InfluxDB."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import wire
from cloud import IngestService
from cloud.ingest import TimeWindow
from cloud.storage import InfluxV1Writer, Store
from safewatch.cli import app
from tests.db_support import cloud_db_url
from tests.factories import T0, alarm, point, telemetry

pytestmark = pytest.mark.contract


async def _dead_letter_three(db_url: str, influx_url: str, db: str) -> None:
    store = Store(db_url)
    store.create_all()
    writer = InfluxV1Writer(influx_url, db)
    strict = IngestService("127.0.0.1", 1, store, writer, ts_window=TimeWindow(60, 60))
    batch = telemetry(3, point("CH4-101", 0.7, T0))
    for message in (alarm(2, ts_ns=T0), batch):  # stamped in 2023: outside the window
        await strict.handle(wire.topic_of(message), wire.encode(message))
    await strict.handle("safewatch/v1/mine-a/gw-1/telemetry", b'{"type":"telemetry"\xff}')
    await writer.aclose()
    store.close()


def test_list_and_replay_dead_letters(tmp_path: Path, influx_db: tuple[str, str]) -> None:
    influx_url, db = influx_db
    db_url = cloud_db_url(tmp_path, "cloud.db")
    asyncio.run(_dead_letter_three(db_url, influx_url, db))

    runner = CliRunner()
    influx = ["--influx-url", influx_url, "--influx-db", db]
    listed = runner.invoke(app, ["cloud", "dead-letters", "list", "--db-url", db_url, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [r["reason"] for r in rows] == ["ts_out_of_window", "ts_out_of_window", "malformed"]
    assert rows[2]["payload"] == '{"type":"telemetry"\\xff}'
    human = runner.invoke(app, ["cloud", "dead-letters", "list", "--db-url", db_url])
    assert "3 shown of 3 dead letters" in human.output

    replay = runner.invoke(
        app,
        ["cloud", "dead-letters", "replay", "--db-url", db_url, *influx],
    )
    assert replay.exit_code == 0, replay.output
    assert "replayed 3 dead letters: 2 stored, 1 dead letters again" in replay.output

    store = Store(db_url)
    assert [a.seq for a in store.alarms()] == [2]
    (left,) = store.dead_letters()
    assert left.reason == "malformed" and left.id > rows[2]["id"]
    store.close()
    r = httpx.post(
        f"{influx_url}/query",
        params={"db": db, "q": 'SELECT value FROM "ch4"', "epoch": "ns"},
    )
    assert r.json()["results"][0]["series"][0]["values"] == [[T0, 0.7]]
    # Replaying one id: the junk stays a dead letter once more.
    again = runner.invoke(
        app,
        ["cloud", "dead-letters", "replay", str(left.id), "--db-url", db_url, *influx],
    )
    assert "replayed 1 dead letters: 0 stored, 1 dead letters again" in again.output
