"""Alembic environment: run on the connection :mod:`cloud.migrations` hands over.

Never run on its own (no alembic.ini): ``safewatch cloud db upgrade`` or the cloud
service calls :func:`cloud.migrations.upgrade` with the store's engine.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from cloud.migrations import VERSION_TABLE, target_metadata

# Any constant: two processes upgrading one PostgreSQL database take turns.
_PG_LOCK = 0x5AFE_0001


def _run(connection: Connection) -> None:
    translate = connection.get_execution_options().get("schema_translate_map") or {}
    schema = translate.get(None)
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER on SQLite: copy-and-move
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=_PG_LOCK))
            if schema is not None:
                connection.execute(
                    sa.text("SELECT set_config('search_path', :s, true)").bindparams(s=schema)
                )
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("SafeWatch migrations run online, on a connection (no SQL scripts)")
_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError("run migrations through cloud.migrations.upgrade(engine)")
_run(_connection)
