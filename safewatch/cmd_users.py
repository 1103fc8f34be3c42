"""``safewatch users|tokens|keys ...``: API principals and JWT signing keys.

They work on the cloud database directly (the one ``safewatch cloud run --db-url``
uses), so the first admin can be created before the API runs. Every change is
written to the audit trail with the actor ``cli:<login name>``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cloud import migrations
from cloud.audit import AuditLog
from cloud.auth import (
    Authenticator,
    AuthStore,
    DuplicateUser,
    InvalidRequest,
    Role,
    UnknownToken,
    UnknownUser,
)
from cloud.storage import Store, StoreError
from safewatch.cmd_cloud import sqlite_parent

users_app = typer.Typer(no_args_is_help=True)
tokens_app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(no_args_is_help=True)

DEFAULT_DB_URL = "sqlite:///var/safewatch-cloud.db"
DbUrl = Annotated[
    str,
    typer.Option(
        "--db-url",
        envvar="SAFEWATCH_DB_URL",
        help="The cloud database (as given to `safewatch cloud run --db-url`).",
    ),
]
RoleOpt = Annotated[Role, typer.Option("--role", help="The role granted.")]


def actor() -> str:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = str(os.getuid())
    return f"cli:{who}"


@dataclass
class Opened:
    store: Store
    audit: AuditLog
    auth: Authenticator


@contextmanager
def open_auth(db_url: str, invalid_exit: int = 1) -> Iterator[Opened]:
    """The auth and audit tables of ``db_url`` (created if missing).

    Exits 1 on DB errors and unknown or duplicate users/tokens, ``invalid_exit`` on a
    request the authenticator refuses (a weak password is a usage error: 2).
    """
    try:
        sqlite_parent(db_url)
        store = Store(db_url)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        audit = AuditLog(store.engine)
        auth_store = AuthStore(store.engine)
        migrations.upgrade(store.engine)
        yield Opened(store, audit, Authenticator(auth_store, audit))
    except (StoreError, UnknownUser, UnknownToken, DuplicateUser) as exc:
        raise _fail(str(exc)) from exc
    except InvalidRequest as exc:
        raise _fail(str(exc), invalid_exit) from exc
    finally:
        store.close()


def _read_password(password_stdin: bool, password_env: str | None) -> str:
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            typer.echo(f"error: environment variable {password_env} is empty or unset", err=True)
            raise typer.Exit(2)
        return value
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first stdin line.")
]
PasswordEnv = Annotated[
    str | None,
    typer.Option("--password-env", help="Read the password from this environment variable."),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@users_app.command("add")
def users_add(
    username: str,
    role: RoleOpt,
    db_url: DbUrl = DEFAULT_DB_URL,
    password_stdin: PasswordStdin = False,
    password_env: PasswordEnv = None,
) -> None:
    """Add a user (prompts for the password unless --password-stdin/--password-env)."""
    password = _read_password(password_stdin, password_env)
    with open_auth(db_url, invalid_exit=2) as o:
        user = o.auth.add_user(username, password, role, actor())
    typer.echo(f"added user {user.username} ({user.role})")


@users_app.command("list")
def users_list(db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """List users with their role and state."""
    with open_auth(db_url) as o:
        users = o.auth.store.users()
    table = Table("user", "role", "state", "created (UTC)")
    for u in users:
        table.add_row(
            u.username,
            u.role.value,
            "disabled" if u.disabled else "active",
            u.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console(width=120).print(table)


def _set_disabled(username: str, disabled: bool, db_url: str) -> None:
    with open_auth(db_url) as o:
        o.auth.set_disabled(username, disabled, actor())
    typer.echo(f"user {username} {'disabled' if disabled else 'enabled'}")


@users_app.command("disable")
def users_disable(username: str, db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Disable a user: logins and every token already issued to them are refused."""
    _set_disabled(username, True, db_url)


@users_app.command("enable")
def users_enable(username: str, db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Enable a disabled user again (they must log in anew)."""
    _set_disabled(username, False, db_url)


@users_app.command("passwd")
def users_passwd(
    username: str,
    db_url: DbUrl = DEFAULT_DB_URL,
    password_stdin: PasswordStdin = False,
    password_env: PasswordEnv = None,
) -> None:
    """Set a user's password; tokens issued before are refused."""
    password = _read_password(password_stdin, password_env)
    with open_auth(db_url, invalid_exit=2) as o:
        o.auth.set_password(username, password, actor())
    typer.echo(f"password of {username} changed")


@users_app.command("role")
def users_role(username: str, role: Role, db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Change a user's role; tokens issued before are refused."""
    with open_auth(db_url) as o:
        o.auth.set_role(username, role, actor())
    typer.echo(f"user {username} is now {role.value}")


@tokens_app.command("create")
def tokens_create(
    name: str,
    role: RoleOpt,
    db_url: DbUrl = DEFAULT_DB_URL,
    expires_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Expire after this many days.")
    ] = None,
) -> None:
    """Create an API token for a machine; the token is printed once, on stdout."""
    expires = None if expires_days is None else dt.timedelta(days=expires_days)
    with open_auth(db_url) as o:
        secret, record = o.auth.create_token(name, role, actor(), expires)
    typer.echo(
        f"token {record.token_id} ({name}, {role.value}); send it as: Bearer <token>", err=True
    )
    typer.echo(secret)


@tokens_app.command("list")
def tokens_list(db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """List API tokens (never their secrets)."""
    with open_auth(db_url) as o:
        tokens = o.auth.store.tokens()
    table = Table("id", "name", "role", "created by", "expires", "state")
    now = dt.datetime.now(dt.UTC)
    for t in tokens:
        state = "revoked" if t.revoked_at else "expired" if not t.usable(now) else "active"
        expires = t.expires_at.strftime("%Y-%m-%d") if t.expires_at else "-"
        table.add_row(t.token_id, t.name, t.role.value, t.created_by, expires, state)
    Console(width=140).print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Revoke an API token by its id."""
    with open_auth(db_url) as o:
        o.auth.revoke_token(token_id, actor())
    typer.echo(f"token {token_id} revoked")


@keys_app.command("list")
def keys_list(db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """List JWT signing keys (the newest active one signs)."""
    with open_auth(db_url) as o:
        keys = o.auth.store.signing_keys(include_retired=True)
    table = Table("kid", "created (UTC)", "state")
    signing = next((k.kid for k in keys if k.retired_at is None), None)
    for k in keys:
        state = "retired" if k.retired_at else "signs" if k.kid == signing else "verifies"
        table.add_row(k.kid, k.created_at.strftime("%Y-%m-%d %H:%M:%S"), state)
    Console(width=120).print(table)


@keys_app.command("rotate")
def keys_rotate(db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Add a new signing key; older keys keep verifying until retired."""
    with open_auth(db_url) as o:
        key = o.auth.rotate_key(actor())
    typer.echo(f"new signing key {key.kid}")


@keys_app.command("retire")
def keys_retire(kid: str, db_url: DbUrl = DEFAULT_DB_URL) -> None:
    """Retire a signing key: tokens it signed are refused (within 30 s on running APIs)."""
    with open_auth(db_url) as o:
        if not o.auth.retire_key(kid, actor()):
            raise _fail(f"no active signing key {kid!r}")
    typer.echo(f"signing key {kid} retired")
