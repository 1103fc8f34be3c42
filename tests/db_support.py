"""The cloud database of a test: SQLite in the test's directory, or PostgreSQL.

``SAFEWATCH_TEST_DB`` unset: :func:`cloud_db_url` is a SQLite file under the test's tmp_path.
``SAFEWATCH_TEST_DB=postgresql+psycopg://postgres@127.0.0.1:5432/test``: every cloud
database of the suite is a private schema there (``search_path`` set in the URL, so
every connection - also a subprocess given the URL - sees only its own tables), dropped
at the end of the session. Run the suite that way with
``SAFEWATCH_TEST_DB=postgresql+psycopg://postgres@127.0.0.1:5432/test scripts/test.sh``.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

__all__ = [
    "PG_URL",
    "TEST_DB",
    "cloud_db_url",
    "database_locked",
    "drop_made_schemas",
    "pg_schema",
    "schema_url",
]

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TEST_DB = os.environ.get("SAFEWATCH_TEST_DB", "").strip()

_made: dict[tuple[str, str], tuple[str, str]] = {}  # (tmp_path, name) -> (server url, schema)


def schema_url(url: str, schema: str) -> str:
    """``url`` with every connection's ``search_path`` set to ``schema``."""
    with_path = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return with_path.render_as_string(hide_password=False)


def _create_schema(url: str) -> str:
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {url} is required for this test: {exc}")
    finally:
        engine.dispose()
    return name


def _drop_schema(url: str, name: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        engine.dispose()


@contextmanager
def pg_schema(url: str = PG_URL) -> Iterator[str]:
    """A fresh schema on the real PostgreSQL, dropped afterwards."""
    name = _create_schema(url)
    try:
        yield name
    finally:
        _drop_schema(url, name)


def cloud_db_url(tmp_path: Path, name: str = "cloud.db") -> str:
    """The cloud database ``name`` of one test (the same URL when asked again)."""
    if not TEST_DB:
        return f"sqlite:///{tmp_path / name}"
    key = (str(tmp_path), name)
    if key not in _made:
        _made[key] = (TEST_DB, _create_schema(TEST_DB))
    server, schema = _made[key]
    return schema_url(server, schema)


def drop_made_schemas() -> None:
    """Drop every schema :func:`cloud_db_url` made (end of the session)."""
    while _made:
        _, (server, schema) = _made.popitem()
        _drop_schema(server, schema)


# The tables the ingest writes in every batch (locking them stalls it on PostgreSQL).
_INGEST_TABLES = ("gateways", "seen_seq", "alarm_events", "latest_values")


@contextmanager
def database_locked(url: str) -> Iterator[None]:
    """The cloud database ``url`` locked against writers while inside: a fault the ingest
    must wait out and go on from. SQLite: ``BEGIN EXCLUSIVE`` on the file; PostgreSQL:
    the ingest's tables locked ``ACCESS EXCLUSIVE`` in an open transaction."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database, url
        lock = sqlite3.connect(parsed.database, isolation_level=None, timeout=30)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            yield
            lock.execute("COMMIT")
        finally:
            lock.close()
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = ", ".join(_INGEST_TABLES)
            conn.execute(sa.text(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()
