"""Login, access tokens, key rotation, machine tokens, rate limits and their audit rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI

from cloud import create_app
from cloud.audit import AuditAction
from cloud.auth import (
    Authenticator,
    InvalidRequest,
    LimiterSettings,
    LoginFailed,
    LoginLimiter,
    NotAuthenticated,
    RateLimited,
    Role,
)
from cloud.storage import Store
from tests.auth_support import PASSWORD, fast_hasher, headers_for, make_authenticator
from tests.db_support import cloud_db_url


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(cloud_db_url(tmp_path, "auth.db"))
    s.create_all()
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth(store: Store, clock: FakeClock) -> Authenticator:
    limiter = LoginLimiter(
        LimiterSettings(
            failures_per_user=3, user_window_s=60, attempts_per_address=8, address_window_s=300
        ),
        clock=clock,
    )
    return make_authenticator(store.engine, limiter=limiter)


@pytest.fixture
def app(store: Store, auth: Authenticator) -> FastAPI:
    health = {"db": True, "influx": True, "mqtt": True}
    return create_app(store, lambda: health, authenticator=auth, audit=auth.audit)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.0.0.7", 5000)), base_url="http://api"
    ) as c:
        yield c


def _actions(auth: Authenticator) -> list[str]:
    return [e.action for e in reversed(auth.audit.entries(limit=1000))]


async def test_password_login_gives_a_token_that_works(
    auth: Authenticator, client: httpx.AsyncClient
) -> None:
    auth.add_user("alice", PASSWORD, Role.SAFETY_ENGINEER, "test")
    answer = await client.post(
        "/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.json() == {"name": "alice", "role": "safety_engineer", "kind": "user"}
    login = auth.audit.entries(action=AuditAction.LOGIN)[0]
    assert (login.actor, login.details_dict()) == ("alice", {"address": "10.0.0.7"})


async def test_wrong_password_unknown_user_and_disabled_user_are_401_and_audited(
    auth: Authenticator, client: httpx.AsyncClient
) -> None:
    auth.add_user("bob", PASSWORD, Role.VIEWER, "test")
    auth.add_user("carol", PASSWORD, Role.VIEWER, "test")
    auth.set_disabled("carol", True, "test")
    for username, password in (
        ("bob", "wrong password!"),
        ("nobody", PASSWORD),
        ("carol", PASSWORD),
    ):
        answer = await client.post(
            "/api/v1/auth/token", data={"username": username, "password": password}
        )
        assert answer.status_code == 401, answer.text
        assert answer.json() == {"detail": "wrong user name or password"}  # same for all
    failures = auth.audit.entries(action=AuditAction.LOGIN_FAILED)
    assert sorted((f.target, f.details_dict()["why"]) for f in failures) == [
        ("bob", "password"),
        ("carol", "disabled"),
        ("nobody", "unknown user"),
    ]


async def test_login_rate_limited_per_user_then_per_address(
    auth: Authenticator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    auth.add_user("dave", PASSWORD, Role.VIEWER, "test")

    async def login(user: str, password: str) -> httpx.Response:
        return await client.post(
            "/api/v1/auth/token", data={"username": user, "password": password}
        )

    for _ in range(3):
        assert (await login("dave", "not the password")).status_code == 401
    locked = await login("dave", PASSWORD)  # right password, but locked out
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) == 60
    assert (await login("erin", "whatever123")).status_code == 401  # other users still try
    clock.now += 61
    assert (await login("dave", PASSWORD)).status_code == 200  # window over
    # 8 attempts per address in 5 minutes: 6 so far
    for _ in range(2):
        await login("frank", "whatever123")
    by_address = await login("dave", PASSWORD)
    assert by_address.status_code == 429
    assert "client address" in by_address.json()["detail"]
    limited = auth.audit.entries(action=AuditAction.LOGIN_RATE_LIMITED)
    assert {r.details_dict()["by"] for r in limited} == {"user", "client address"}


def test_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(LimiterSettings(max_keys=100))
    for n in range(1000):
        limiter.failed(f"user-{n}")
        limiter.attempt(f"user-{n}", f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._users._events) <= 100
    assert len(limiter._addresses._events) <= 100


def test_rate_limited_carries_whole_seconds() -> None:
    assert RateLimited("user", 0.2).retry_after == 1
    assert RateLimited("user", 59.1).retry_after == 60


def test_key_rotation_newest_signs_all_verify_until_retired(auth: Authenticator) -> None:
    user = auth.add_user("gina", PASSWORD, Role.VIEWER, "test")
    old = auth.issue(user).access_token
    old_kid = jwt.get_unverified_header(old)["kid"]
    new_key = auth.rotate_key("test")
    new = auth.issue(user).access_token
    assert jwt.get_unverified_header(new)["kid"] == new_key.kid != old_kid
    assert auth.authenticate(old).name == auth.authenticate(new).name == "gina"
    assert auth.retire_key(old_kid, "test")
    with pytest.raises(NotAuthenticated, match="unknown or retired key"):
        auth.authenticate(old)
    assert auth.authenticate(new).name == "gina"
    assert not auth.retire_key(old_kid, "test")  # already retired
    assert {AuditAction.SIGNING_KEY_ADDED, AuditAction.SIGNING_KEY_RETIRED} <= set(_actions(auth))


def test_retired_key_is_refused_by_another_process_after_refresh(
    store: Store, auth: Authenticator
) -> None:
    user = auth.add_user("hal", PASSWORD, Role.VIEWER, "test")
    token = auth.issue(user).access_token
    other = make_authenticator(store.engine)  # a second API worker on the same DB
    assert other.authenticate(token).name == "hal"
    other.rotate_key("test")
    other.retire_key(jwt.get_unverified_header(token)["kid"], "test")
    auth._keys_read_at = float("-inf")  # as after the 30 s cache period
    with pytest.raises(NotAuthenticated):
        auth.authenticate(token)


def test_expired_forged_and_alg_none_tokens_are_refused(store: Store) -> None:
    clock = FakeClock()
    auth = make_authenticator(store.engine)
    auth._clock = clock
    clock.now = dt.datetime.now(dt.UTC).timestamp() - 7200  # issued two hours ago
    user = auth.add_user("ivan", PASSWORD, Role.ADMIN, "test")
    expired = auth.issue(user).access_token
    with pytest.raises(NotAuthenticated, match="expired"):
        auth.authenticate(expired)
    clock.now = dt.datetime.now(dt.UTC).timestamp()
    good = auth.issue(user).access_token
    header, payload, signature = good.split(".")
    with pytest.raises(NotAuthenticated):
        auth.authenticate(f"{header}.{payload}.{signature[:-4]}AAAA")
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    unsigned = jwt.encode(claims, key="", algorithm="none", headers={"kid": kid})
    with pytest.raises(NotAuthenticated):
        auth.authenticate(unsigned)
    other_key = jwt.encode(
        claims, "a guessed secret that is long enough!", algorithm="HS256",
        headers={"kid": kid},
    )  # fmt: skip
    with pytest.raises(NotAuthenticated):
        auth.authenticate(other_key)


def test_disable_password_and_role_changes_end_earlier_tokens(
    auth: Authenticator, clock: FakeClock
) -> None:
    user = auth.add_user("judy", PASSWORD, Role.ADMIN, "test")
    auth.add_user("root", PASSWORD, Role.ADMIN, "test")
    token = auth.issue(user).access_token
    auth.set_disabled("judy", True, "test")
    with pytest.raises(NotAuthenticated, match="disabled"):
        auth.authenticate(token)
    auth.set_disabled("judy", False, "test")
    with pytest.raises(NotAuthenticated, match="before the user's last change"):
        auth.authenticate(token)
    token = auth.issue(auth.store.user("judy")).access_token
    assert auth.authenticate(token).role == Role.ADMIN
    auth.set_role("judy", Role.VIEWER, "test")
    with pytest.raises(NotAuthenticated):
        auth.authenticate(token)
    fresh = auth.issue(auth.store.user("judy")).access_token
    assert auth.authenticate(fresh).role == Role.VIEWER
    auth.set_password("judy", "another long password", "test")
    with pytest.raises(NotAuthenticated):
        auth.authenticate(fresh)
    with pytest.raises(LoginFailed):
        auth.login("judy", PASSWORD, "127.0.0.1")
    assert auth.login("judy", "another long password", "127.0.0.1").access_token


def test_last_admin_cannot_be_disabled_or_demoted(auth: Authenticator) -> None:
    auth.add_user("kim", PASSWORD, Role.ADMIN, "test")
    with pytest.raises(InvalidRequest, match="last active admin"):
        auth.set_disabled("kim", True, "test")
    with pytest.raises(InvalidRequest, match="last active admin"):
        auth.set_role("kim", Role.VIEWER, "test")
    with pytest.raises(InvalidRequest):
        auth.add_user("lee", "short", Role.VIEWER, "test")
    with pytest.raises(InvalidRequest):
        auth.add_user("bad name!", PASSWORD, Role.VIEWER, "test")


def test_machine_tokens_hashed_at_rest_revocable_and_expiring(
    store: Store, auth: Authenticator
) -> None:
    secret, record = auth.create_token("wall-display", Role.VIEWER, "test")
    assert auth.authenticate(secret).name == "token:wall-display"
    raw = store.engine.raw_connection()
    try:
        dump = "\n".join(str(row) for row in raw.execute("SELECT * FROM auth_api_tokens"))
    finally:
        raw.close()
    assert secret.split(".")[2] not in dump, "the secret is stored only as a hash"
    with pytest.raises(NotAuthenticated):
        auth.authenticate(secret[:-2] + "xx")
    auth.revoke_token(record.token_id, "test")
    with pytest.raises(NotAuthenticated, match="revoked"):
        auth.authenticate(secret)
    short, _ = auth.create_token("brief", Role.VIEWER, "test", dt.timedelta(seconds=-1))
    with pytest.raises(NotAuthenticated, match="expired"):
        auth.authenticate(short)


async def test_admin_manages_users_and_tokens_over_the_api(
    auth: Authenticator, client: httpx.AsyncClient
) -> None:
    admin = headers_for(auth, Role.ADMIN)
    made = await client.post(
        "/api/v1/users",
        json={"username": "mia", "password": PASSWORD, "role": "rectifier"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    again = await client.post(
        "/api/v1/users",
        json={"username": "mia", "password": PASSWORD, "role": "rectifier"},
        headers=admin,
    )
    assert again.status_code == 409
    off = await client.patch("/api/v1/users/mia", json={"disabled": True}, headers=admin)
    assert off.json()["disabled"] is True
    assert (await client.patch("/api/v1/users/nobody", json={}, headers=admin)).status_code == 404
    created = await client.post(
        "/api/v1/tokens", json={"name": "cmms", "role": "rectifier"}, headers=admin
    )
    assert created.status_code == 201
    token = created.json()["token"]
    me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"name": "token:cmms", "role": "rectifier", "kind": "token"}
    listed = (await client.get("/api/v1/tokens", headers=admin)).json()
    assert all("token" not in t for t in listed), "secrets are never listed"
    revoked = await client.delete(f"/api/v1/tokens/{created.json()['token_id']}", headers=admin)
    assert revoked.json()["revoked_at"] is not None
    assert (
        await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 401
    trail = await client.get("/api/v1/audit", headers=admin)
    actions = [row["action"] for row in trail.json()]
    assert {"user_added", "user_disabled", "token_created", "token_revoked"} <= set(actions)
    verified = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    assert verified["ok"] is True and verified["rows"] == len(actions)


def test_fast_hasher_keeps_the_argon2_format() -> None:
    assert fast_hasher().hash("x" * 12).startswith("$argon2id$")
