"""The hash-chained audit trail: appends, verification, tampering straight in the DB."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cloud.audit import GENESIS, AuditAction, AuditLog, entry_hash
from cloud.storage import Store
from safewatch.cli import app as cli
from tests.db_support import cloud_db_url

AUDIT_ROWS = 6


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return cloud_db_url(tmp_path, "audit.db")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture
def audit(store: Store) -> AuditLog:
    log = AuditLog(store.engine)
    log.create_all()
    for n in range(AUDIT_ROWS):
        log.record(f"user-{n}", AuditAction.CONFIG_CHANGED, f"site-{n}", {"n": n, "why": "test"})
    return log


def _sql(store: Store, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def _problems(audit: AuditLog, anchor: tuple[int, str] | None = None) -> list[tuple[int, str]]:
    return [(p.seq, p.message) for p in audit.verify(anchor).problems]


def test_rows_chain_from_genesis_and_verify(audit: AuditLog) -> None:
    rows = list(reversed(audit.entries()))
    assert [r.seq for r in rows] == list(range(1, AUDIT_ROWS + 1))
    assert rows[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    first = rows[0]
    assert first.hash == entry_hash(
        1, first.at_ns, "user-0", "config_changed", "site-0", '{"n":0,"why":"test"}', GENESIS
    )
    report = audit.verify()
    assert report.ok and report.rows == AUDIT_ROWS
    assert (report.head_seq, report.head_hash) == audit.head() == (AUDIT_ROWS, rows[-1].hash)


def test_empty_trail_verifies(store: Store) -> None:
    log = AuditLog(store.engine)
    log.create_all()
    report = log.verify()
    assert report.ok and report.rows == 0 and log.head() == (0, GENESIS)


def test_edited_row_is_caught(store: Store, audit: AuditLog) -> None:
    _sql(store, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    assert _problems(audit) == [(3, "contents do not match the row's hash (edited)")]


def test_edited_row_with_recomputed_hash_breaks_the_next_link(
    store: Store, audit: AuditLog
) -> None:
    row = next(r for r in audit.entries() if r.seq == 3)
    forged = entry_hash(3, row.at_ns, "mallory", row.action, row.target, row.details, row.prev_hash)
    _sql(store, "UPDATE audit_log SET actor = 'mallory', hash = :h WHERE seq = 3", h=forged)
    assert [seq for seq, _ in _problems(audit)] == [4]


def test_deleted_row_is_caught(store: Store, audit: AuditLog) -> None:
    _sql(store, "DELETE FROM audit_log WHERE seq = 2")
    problems = _problems(audit)
    assert problems[0] == (3, "row(s) 2 missing (deleted)")
    assert [seq for seq, _ in problems] == [3, 3]  # gap and broken link


def test_inserted_row_is_caught(store: Store, audit: AuditLog) -> None:
    """Squeezing a row in means renumbering the rest; the old row 3 no longer links."""
    two = next(r for r in audit.entries() if r.seq == 2)
    _sql(store, "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3")
    _sql(store, "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 103")
    details = '{"n":99}'
    digest = entry_hash(3, two.at_ns + 1, "mallory", "override", "x", details, two.hash)
    _sql(
        store,
        "INSERT INTO audit_log (seq, at_ns, actor, action, target, details, prev_hash, hash) "
        "VALUES (3, :at, 'mallory', 'override', 'x', :d, :p, :h)",
        at=two.at_ns + 1,
        d=details,
        p="f" * 64,  # prev_hash must be unique, so it cannot simply repeat row 2's hash
        h=digest,
    )
    problems = _problems(audit)
    assert problems, "an inserted row must not verify"
    assert problems[0][0] == 3


def test_deleting_the_tail_is_caught_against_an_anchor(store: Store, audit: AuditLog) -> None:
    anchor = audit.head()
    _sql(store, "DELETE FROM audit_log WHERE seq >= 5")
    assert _problems(audit) == []  # the chain alone cannot tell a shorter one
    assert _problems(audit, anchor) == [
        (AUDIT_ROWS, "anchor row is gone: the chain ends at seq 4 (rows deleted from the end)")
    ]


def test_huge_details_are_summarised(audit: AuditLog) -> None:
    entry = audit.record("x", AuditAction.CALIBRATION, "t", {"blob": "y" * 100_000})
    assert len(entry.details) < 200 and entry.details_dict()["summarised"] is True
    assert audit.verify().ok


def test_concurrent_appenders_on_separate_connections_never_fork(db_url: str) -> None:
    """Four writers with their own engines (like four processes) racing on one SQLite file."""
    writers = [Store(db_url) for _ in range(4)]
    logs = [AuditLog(w.engine) for w in writers]
    logs[0].create_all()
    errors: list[BaseException] = []

    def append(log: AuditLog, n: int) -> None:
        try:
            for i in range(25):
                log.record(f"writer-{n}", AuditAction.ALARM_ACKNOWLEDGED, f"alarm-{i}")
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
        assert report.rows == 100
    finally:
        for w in writers:
            w.close()


def test_cli_verify_head_and_show(db_url: str, store: Store, audit: AuditLog) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", "--db-url", db_url])
    assert ok.exit_code == 0, ok.output
    assert f"audit trail intact: {AUDIT_ROWS} rows" in ok.output
    head = runner.invoke(cli, ["audit", "head", "--db-url", db_url]).output.strip()
    assert head == f"{AUDIT_ROWS}:{audit.head()[1]}"
    shown = runner.invoke(cli, ["audit", "show", "--db-url", db_url, "--limit", "2"])
    assert "config_changed" in shown.output and "user-5" in shown.output

    _sql(store, "UPDATE audit_log SET details = '{}' WHERE seq = 2")
    bad = runner.invoke(cli, ["audit", "verify", "--db-url", db_url])
    assert bad.exit_code == 1
    assert "TAMPERED seq 2: contents do not match the row's hash (edited)" in bad.output
    assert "NOT intact" in bad.output

    _sql(store, "DELETE FROM audit_log WHERE seq = 6")
    _sql(store, "UPDATE audit_log SET details = :d WHERE seq = 2", d='{"n":1,"why":"test"}')
    tail = runner.invoke(cli, ["audit", "verify", "--db-url", db_url, "--anchor", head])
    assert tail.exit_code == 1 and "rows deleted from the end" in tail.output
    malformed = runner.invoke(cli, ["audit", "verify", "--db-url", db_url, "--anchor", "6:zz"])
    assert malformed.exit_code == 2
