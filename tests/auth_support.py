"""Authentication helpers for tests: a fast password hasher, principals of every role."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy.engine import Engine

from cloud.audit import AuditLog
from cloud.auth import Authenticator, AuthStore, LoginLimiter, Role

PASSWORD = "correct horse battery staple"


def fast_hasher() -> PasswordHash:
    """argon2 with small costs: the real format and checks, milliseconds per hash."""
    return PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))


def make_authenticator(
    engine: Engine, *, limiter: LoginLimiter | None = None, access_ttl_s: int = 3600
) -> Authenticator:
    """An Authenticator with its tables (and the audit table) created on ``engine``."""
    audit = AuditLog(engine)
    audit.create_all()
    store = AuthStore(engine)
    store.create_all()
    return Authenticator(
        store, audit, hasher=fast_hasher(), limiter=limiter, access_ttl_s=access_ttl_s
    )


def headers_for(auth: Authenticator, role: Role, name: str | None = None) -> dict[str, str]:
    """Authorization headers of a fresh user with ``role`` (name defaults to the role)."""
    username = name or f"{role.value.replace('_', '-')}-user"
    user = auth.store.find_user(username) or auth.add_user(username, PASSWORD, role, "test")
    return {"Authorization": f"Bearer {auth.issue(user).access_token}"}


def machine_headers(auth: Authenticator, role: Role = Role.VIEWER) -> dict[str, str]:
    secret, _ = auth.create_token(f"test-{role.value}", role, "test")
    return {"Authorization": f"Bearer {secret}"}
