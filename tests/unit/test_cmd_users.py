"""``safewatch users|tokens|keys`` against a SQLite cloud database."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.audit import AuditLog
from cloud.auth import Authenticator, AuthStore, NotAuthenticated, Role
from cloud.storage import Store
from safewatch.cli import app as cli
from tests.auth_support import PASSWORD
from tests.db_support import cloud_db_url


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return cloud_db_url(tmp_path / "nested")  # SQLite: the folder is made by the CLI


def _auth(db_url: str) -> tuple[Store, Authenticator]:
    store = Store(db_url)
    return store, Authenticator(AuthStore(store.engine), AuditLog(store.engine))


def test_users_add_list_disable_enable_and_the_audit_trail(db_url: str) -> None:
    runner = CliRunner()
    add = runner.invoke(
        cli,
        ["users", "add", "ops", "--role", "admin", "--db-url", db_url, "--password-stdin"],
        input=f"{PASSWORD}\n",
    )
    assert add.exit_code == 0, add.output
    assert "added user ops (admin)" in add.output
    env_add = runner.invoke(
        cli,
        ["users", "add", "eve", "--role", "viewer", "--db-url", db_url, "--password-env", "PW"],
        env={"PW": "another long password"},
    )
    assert env_add.exit_code == 0, env_add.output
    dup = runner.invoke(
        cli,
        ["users", "add", "eve", "--role", "viewer", "--db-url", db_url, "--password-env", "PW"],
        env={"PW": "another long password"},
    )
    assert dup.exit_code == 1 and "exists" in dup.output
    weak = runner.invoke(
        cli,
        ["users", "add", "x", "--role", "viewer", "--db-url", db_url, "--password-stdin"],
        input="short\n",
    )
    assert weak.exit_code == 2 and "10 to 1024 characters" in weak.output
    bad_role = runner.invoke(cli, ["users", "add", "y", "--role", "boss", "--db-url", db_url])
    assert bad_role.exit_code == 2

    listed = runner.invoke(cli, ["users", "list", "--db-url", db_url])
    assert "ops" in listed.output and "eve" in listed.output and "viewer" in listed.output

    last_admin = runner.invoke(cli, ["users", "disable", "ops", "--db-url", db_url])
    assert last_admin.exit_code == 1 and "last active admin" in last_admin.output
    assert runner.invoke(cli, ["users", "disable", "eve", "--db-url", db_url]).exit_code == 0
    assert "disabled" in runner.invoke(cli, ["users", "list", "--db-url", db_url]).output
    missing = runner.invoke(cli, ["users", "disable", "nobody", "--db-url", db_url])
    assert missing.exit_code == 1 and "no user 'nobody'" in missing.output
    assert runner.invoke(cli, ["users", "enable", "eve", "--db-url", db_url]).exit_code == 0
    role = runner.invoke(cli, ["users", "role", "eve", "reviewer", "--db-url", db_url])
    assert role.exit_code == 0, role.output

    store, auth = _auth(db_url)
    try:
        assert auth.store.user("eve").role == Role.REVIEWER
        token = auth.login("eve", "another long password", "127.0.0.1")
        assert auth.authenticate(token.access_token).name == "eve"
        actions = [(e.actor.startswith("cli:"), e.action) for e in auth.audit.entries()]
        assert (True, "user_added") in actions and (True, "user_disabled") in actions
        assert auth.audit.verify().ok
    finally:
        store.close()


def test_tokens_create_list_revoke_and_keys(db_url: str) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["tokens", "create", "wall", "--role", "viewer", "--db-url", db_url])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("swt.")
    store, auth = _auth(db_url)
    try:
        assert auth.authenticate(secret).role == Role.VIEWER
        token_id = secret.split(".")[1]
        listed = runner.invoke(cli, ["tokens", "list", "--db-url", db_url])
        assert token_id in listed.output and secret.split(".")[2] not in listed.output
        revoked = runner.invoke(cli, ["tokens", "revoke", token_id, "--db-url", db_url])
        assert revoked.exit_code == 0, revoked.output
        with pytest.raises(NotAuthenticated):
            auth.authenticate(secret)
        assert runner.invoke(cli, ["tokens", "revoke", "nope", "--db-url", db_url]).exit_code == 1

        auth.add_user("kate", PASSWORD, Role.ADMIN, "test")
        old = auth.issue(auth.store.user("kate")).access_token
        rotated = runner.invoke(cli, ["keys", "rotate", "--db-url", db_url])
        assert rotated.exit_code == 0, rotated.output
        keys = runner.invoke(cli, ["keys", "list", "--db-url", db_url]).output
        assert "signs" in keys and "verifies" in keys
        old_kid = next(k.kid for k in auth.store.signing_keys() if k.kid not in rotated.output)
        assert runner.invoke(cli, ["keys", "retire", old_kid, "--db-url", db_url]).exit_code == 0
        auth._keys_read_at = float("-inf")
        with pytest.raises(NotAuthenticated):
            auth.authenticate(old)
        assert runner.invoke(cli, ["keys", "retire", old_kid, "--db-url", db_url]).exit_code == 1
    finally:
        store.close()
