"""Audit trail and auth tables on the real PostgreSQL: racing appenders, tampering, logins."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cloud.audit import AuditAction, AuditLog
from cloud.auth import Role
from cloud.storage import Store
from tests.auth_support import PASSWORD, make_authenticator
from tests.db_support import PG_URL, pg_schema

pytestmark = pytest.mark.contract


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema(PG_URL) as name:
        yield name


def test_racing_appenders_keep_one_chain_and_tampering_is_caught(schema: str) -> None:
    stores = [Store(PG_URL, schema=schema) for _ in range(4)]
    logs = [AuditLog(s.engine) for s in stores]
    logs[0].create_all()
    errors: list[BaseException] = []

    def append(log: AuditLog, n: int) -> None:
        try:
            for i in range(25):
                log.record(f"worker-{n}", AuditAction.HAZARD_TRANSITION, f"hazard-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(log, n)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors, errors
        report = logs[0].verify()
        assert report.ok, report.problems
        assert report.rows == 100 and report.head_seq == 100
        with stores[0].engine.begin() as conn:
            conn.execute(
                sa.text(f"UPDATE \"{schema}\".audit_log SET target = 'hazard-x' WHERE seq = 50")
            )
            conn.execute(sa.text(f'DELETE FROM "{schema}".audit_log WHERE seq = 70'))
        problems = logs[1].verify().problems
        assert [p.seq for p in problems] == [50, 71, 71]
    finally:
        for s in stores:
            s.close()


def test_logins_and_tokens_on_postgres(schema: str) -> None:
    store = Store(PG_URL, schema=schema)
    try:
        auth = make_authenticator(store.engine)
        auth.add_user("pg-admin", PASSWORD, Role.ADMIN, "test")
        token = auth.login("pg-admin", PASSWORD, "127.0.0.1").access_token
        assert auth.authenticate(token).role == Role.ADMIN
        secret, record = auth.create_token("scada", Role.VIEWER, "pg-admin")
        assert auth.authenticate(secret).name == "token:scada"
        auth.revoke_token(record.token_id, "pg-admin")
        assert [u.username for u in auth.store.users()] == ["pg-admin"]
        assert auth.audit.verify().ok
    finally:
        store.close()
