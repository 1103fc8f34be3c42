"""Alembic owns the cloud database's schema: every service's tables, revision by revision.

``upgrade(engine)`` brings a database (SQLite or PostgreSQL, empty or older) to the
newest revision; the cloud service runs it at start and ``safewatch cloud db upgrade``
runs it by hand. ``target_metadata()`` is every table the code expects, the models of
each service package; ``schema_diff(engine)`` compares a database with them (alembic's
autogenerate comparison: an empty list means the database is exactly the models).

A new table or column: change the model, then write a revision under ``versions/``
(``cloud.migrations.revision(engine, "what")`` autogenerates a draft to review) and let
the migration test prove upgrade = models and downgrade/upgrade round-trip.

Databases made before Alembic (by ``create_all``, all tables or only some, e.g. by
``safewatch users add``) are adopted: revision ``0001`` creates only the tables that are
missing and keeps the others with their data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud.storage import StoreError

__all__ = [
    "INITIAL_REVISION",
    "VERSION_TABLE",
    "current",
    "downgrade",
    "head",
    "merged_metadata",
    "revision",
    "schema_diff",
    "target_metadata",
    "upgrade",
]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
INITIAL_REVISION = "0001"
VERSION_TABLE = "alembic_version"


def target_metadata() -> list[sa.MetaData]:
    """The models of every service: what ``upgrade`` to head must yield."""
    from cloud.alarm_states import AlarmStateBase
    from cloud.audit._log import AuditBase
    from cloud.auth._store import AuthBase
    from cloud.hazards._deadlines import JOBS_METADATA
    from cloud.hazards._service import HazardBase
    from cloud.risk._service import RiskBase
    from cloud.storage.db import Base

    return [
        Base.metadata,
        AuthBase.metadata,
        AuditBase.metadata,
        HazardBase.metadata,
        RiskBase.metadata,
        JOBS_METADATA,
        AlarmStateBase.metadata,
    ]


def merged_metadata() -> sa.MetaData:
    """Every service's tables in one :class:`~sqlalchemy.MetaData` (for comparisons)."""
    merged = sa.MetaData()
    for metadata in target_metadata():
        for table in metadata.sorted_tables:
            table.to_metadata(merged)
    return merged


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


@contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StoreError(f"database {_where(engine)}: migration failed: {exc}") from exc


def _version_schema(conn: Connection) -> str | None:
    """The schema a store's ``schema=`` option maps unqualified tables to, if any."""
    translate = conn.get_execution_options().get("schema_translate_map") or {}
    value = translate.get(None)
    return str(value) if value is not None else None


def _tables(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names(schema=_version_schema(conn)))


def _revision(conn: Connection) -> str | None:
    if VERSION_TABLE not in _tables(conn):
        return None
    ctx = MigrationContext.configure(conn, opts={"version_table_schema": _version_schema(conn)})
    return ctx.get_current_revision()


def head() -> str:
    """The newest revision in this build."""
    script = ScriptDirectory.from_config(_config())
    value = script.get_current_head()
    if value is None:  # pragma: no cover - the package always ships revisions
        raise StoreError(f"no Alembic revisions under {HERE / 'versions'}")
    return value


def current(engine: Engine) -> str | None:
    """The database's revision; None for a database Alembic has not touched."""
    with _connect(engine) as conn:
        if VERSION_TABLE not in _tables(conn):
            return None
        ctx = MigrationContext.configure(conn, opts={"version_table_schema": _version_schema(conn)})
        return ctx.get_current_revision()


def upgrade(engine: Engine, target: str = "head") -> None:
    """Bring the database to ``target`` (default: the newest revision). Blocking.

    Raises :class:`StoreError` naming the database when it cannot be reached or a
    revision fails (nothing of a failed revision stays on PostgreSQL: DDL is transactional).
    """
    with _connect(engine) as conn:
        cfg = _config(conn)
        before = _revision(conn)
        command.upgrade(cfg, target)
        after = _revision(conn)
    if before != after:
        log.info("database %s schema: %s -> %s", _where(engine), before or "empty", after)


def downgrade(engine: Engine, target: str) -> None:
    """Step the database back to ``target`` (``base``: no tables). Blocking."""
    with _connect(engine) as conn:
        command.downgrade(_config(conn), target)


def schema_diff(engine: Engine) -> list[Any]:
    """Alembic's autogenerate comparison of the database with :func:`target_metadata`.

    Empty when the database is exactly the models (tables, columns, types,
    nullability, indexes, unique constraints, foreign keys).
    """
    with _connect(engine) as conn:
        schema = _version_schema(conn)
        if schema is not None and conn.dialect.name == "postgresql":
            # The comparison inspects the default schema: make it the store's.
            conn.execute(sa.text("SELECT set_config('search_path', :s, true)").bindparams(s=schema))
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": _compare_server_default,
                "include_name": _include_name,
            },
        )
        return list(compare_metadata(ctx, merged_metadata()))


def _compare_server_default(
    context: Any,
    inspected_column: Any,
    metadata_column: Any,
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """An empty-string default reads back as ``('')`` (SQLite) or ``''::text`` (PostgreSQL):
    the same default, not a difference. Anything else: alembic's own comparison."""

    def empty(value: str | None) -> bool:
        return value is not None and value.removesuffix("::text").strip("()'\"") == ""

    if empty(inspected_default) and empty(rendered_metadata_default):
        return False
    return None


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return not (type_ == "table" and name == VERSION_TABLE)


def revision(engine: Engine, message: str) -> str:
    """Autogenerate a draft revision (to review and commit) against ``engine``'s database."""
    with _connect(engine) as conn:
        script = command.revision(_config(conn), message=message, autogenerate=True)
    if script is None or isinstance(script, list):  # pragma: no cover - one head
        raise StoreError("alembic made no single revision")
    return str(script.path)
