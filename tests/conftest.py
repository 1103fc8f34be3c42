"""Fixtures for real services. Contract and integration tests use these."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.db_support import drop_made_schemas
from tests.support import INFLUX_URL, Broker, mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto on a free port, stopped after the test."""
    with mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
def influx_db() -> Iterator[tuple[str, str]]:
    """(url, database): a fresh database on the real InfluxDB, dropped afterwards."""
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    try:
        r = httpx.post(f"{INFLUX_URL}/query", params={"q": f'CREATE DATABASE "{name}"'})
        r.raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"InfluxDB at {INFLUX_URL} is required for this test: {exc}")
    yield INFLUX_URL, name
    httpx.post(f"{INFLUX_URL}/query", params={"q": f'DROP DATABASE "{name}"'})


@pytest.fixture(autouse=True, scope="session")
def _drop_test_schemas() -> Iterator[None]:
    """With SAFEWATCH_TEST_DB on PostgreSQL: the private schemas of cloud_db_url() go at the end."""
    yield
    drop_made_schemas()
