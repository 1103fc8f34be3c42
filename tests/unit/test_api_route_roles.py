"""Every API route declares its roles and refuses unauthenticated and wrong-role callers.

The walk covers every route the app serves and every operation of its OpenAPI spec;
a new route fails here until it is guarded and listed in ``EXPECTED_ROLES`` (or is
one of the explicitly public routes in ``cloud.api.PUBLIC_ROUTES``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from cloud import create_app
from cloud.api import PUBLIC_ROUTES
from cloud.auth import ALL_ROLES, Authenticator, Role, RoleGuard
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url

A, SE, RE, RV, V = (
    Role.ADMIN,
    Role.SAFETY_ENGINEER,
    Role.RECTIFIER,
    Role.REVIEWER,
    Role.VIEWER,
)

# The roles each route admits: reviewed here, on purpose, apart from the code.
EXPECTED_ROLES: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/api/v1/alarms"): ALL_ROLES,
    ("GET", "/api/v1/alarms/kpi"): ALL_ROLES,
    ("GET", "/api/v1/alarms/states"): ALL_ROLES,
    ("GET", "/api/v1/latest"): ALL_ROLES,
    ("GET", "/api/v1/gateways"): ALL_ROLES,
    ("GET", "/api/v1/auth/me"): ALL_ROLES,
    ("GET", "/api/v1/users"): frozenset({A}),
    ("POST", "/api/v1/users"): frozenset({A}),
    ("PATCH", "/api/v1/users/{username}"): frozenset({A}),
    ("GET", "/api/v1/tokens"): frozenset({A}),
    ("POST", "/api/v1/tokens"): frozenset({A}),
    ("DELETE", "/api/v1/tokens/{token_id}"): frozenset({A}),
    ("GET", "/api/v1/audit"): frozenset({A, RV, SE}),
    ("GET", "/api/v1/audit/verify"): frozenset({A, RV}),
    ("POST", "/api/v1/gateways/{site}/{gateway}/commands"): frozenset({A, SE}),
    ("POST", "/api/v1/hazards"): frozenset({A, SE, RE, RV}),
    ("GET", "/api/v1/hazards"): ALL_ROLES,
    ("GET", "/api/v1/hazards.csv"): ALL_ROLES,
    ("GET", "/api/v1/hazards/kpis"): ALL_ROLES,
    ("GET", "/api/v1/hazards/{hazard_id}"): ALL_ROLES,
    # Admitted here; the event's own roles are checked inside (tests/unit/test_hazards.py).
    ("POST", "/api/v1/hazards/{hazard_id}/transitions"): frozenset({A, SE, RE, RV}),
    ("GET", "/api/v1/hazards/{hazard_id}/evidence"): ALL_ROLES,
    ("POST", "/api/v1/hazards/{hazard_id}/evidence"): frozenset({A, RE}),
    ("GET", "/api/v1/risk/heatmap"): ALL_ROLES,
    ("GET", "/api/v1/risk/history"): ALL_ROLES,
    ("GET", "/api/v1/wall/snapshot"): ALL_ROLES,
    # a stream: this walk calls it without its required site (422), never streaming
    ("GET", "/api/v1/wall/stream"): ALL_ROLES,
}
PATH_VALUES = {
    "username": "nobody",
    "token_id": "0123456789abcdef",
    "site": "mine-a",
    "gateway": "gw-1",
    "hazard_id": "1",
}


@pytest.fixture
def app_and_auth(tmp_path: Path) -> Iterator[tuple[FastAPI, Authenticator]]:
    store = Store(cloud_db_url(tmp_path, "api.db"))
    store.create_all()
    auth = make_authenticator(store.engine)
    health = {"db": True, "influx": True, "mqtt": True, "counters": {}}
    yield create_app(store, lambda: health, authenticator=auth, audit=auth.audit), auth
    store.close()


@pytest.fixture
async def client(app_and_auth: tuple[FastAPI, Authenticator]) -> AsyncIterator[httpx.AsyncClient]:
    app, _ = app_and_auth
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        yield c


def _guards(dependant: Dependant) -> list[RoleGuard]:
    found = [dependant.call] if isinstance(dependant.call, RoleGuard) else []
    for sub in dependant.dependencies:
        found.extend(_guards(sub))
    return found


def _served(app: FastAPI) -> list[Any]:
    """Every route as served, included routers flattened (FastAPI >= 0.16x includes lazily)."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(app.routes) if iter_contexts is None else list(iter_contexts(app.routes))


def _operations(app: FastAPI) -> list[tuple[str, str, Dependant | None]]:
    """(method, path, dependant or None for plain Starlette routes) of every served route."""
    ops: list[tuple[str, str, Dependant | None]] = []
    for route in _served(app):
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None) or set()
        assert path is not None, f"route without a path: {route!r}"
        original = getattr(route, "original_route", route)
        dependant = route.dependant if isinstance(original, APIRoute) else None
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            ops.append((method, path, dependant))
    return ops


def _url(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: PATH_VALUES[m.group(1)], path)


def test_every_route_is_public_by_name_or_guarded_as_expected(
    app_and_auth: tuple[FastAPI, Authenticator],
) -> None:
    app, _ = app_and_auth
    guarded = set()
    for method, path, route in _operations(app):
        key = (method, path)
        if key in PUBLIC_ROUTES:
            assert route is None or not _guards(route), f"public {key} has a guard"
            continue
        assert route is not None, f"{key} is neither an API route nor listed as public"
        guards = _guards(route)
        assert len(guards) == 1, f"{key} must depend on exactly one RoleGuard, has {len(guards)}"
        assert key in EXPECTED_ROLES, f"{key} is new: add its roles to EXPECTED_ROLES"
        assert guards[0].roles == EXPECTED_ROLES[key], key
        guarded.add(key)
    assert guarded == set(EXPECTED_ROLES), "EXPECTED_ROLES lists routes the app does not serve"


def test_spec_declares_security_and_error_responses(
    app_and_auth: tuple[FastAPI, Authenticator],
) -> None:
    app, _ = app_and_auth
    spec: dict[str, Any] = app.openapi()
    seen = set()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            key = (method.upper(), path)
            seen.add(key)
            declared = set(op["responses"])
            if key in PUBLIC_ROUTES:
                assert "security" not in op, f"public {key} asks for credentials"
                continue
            assert op.get("security"), f"{key} declares no security requirement"
            assert {"401", "403", "503"} <= declared, (key, declared)
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in declared, (key, declared)
    assert set(EXPECTED_ROLES) <= seen
    assert "404" in spec["paths"]["/api/v1/latest"]["get"]["responses"]
    login = spec["paths"]["/api/v1/auth/token"]["post"]["responses"]
    assert {"401", "422", "429", "503"} <= set(login)


async def test_each_route_refuses_anonymous_garbage_and_wrong_role_callers(
    app_and_auth: tuple[FastAPI, Authenticator], client: httpx.AsyncClient
) -> None:
    app, auth = app_and_auth
    headers = {role: headers_for(auth, role) for role in Role}
    checked = 0
    for method, path, route in _operations(app):
        if (method, path) in PUBLIC_ROUTES or route is None:
            continue
        url = _url(path)
        body: dict[str, Any] | None = {} if method in ("POST", "PATCH", "PUT") else None

        anonymous = await client.request(method, url, json=body)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers.get("www-authenticate") == "Bearer"
        for garbage in ("garbage", "swt.0123.nope", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."):
            forged = await client.request(
                method, url, json=body, headers={"Authorization": f"Bearer {garbage}"}
            )
            assert forged.status_code == 401, (method, path, garbage, forged.text)

        allowed = EXPECTED_ROLES[(method, path)]
        for role in Role:
            answer = await client.request(method, url, json=body, headers=headers[role])
            if role in allowed:
                assert answer.status_code not in (401, 403), (method, path, role, answer.text)
            else:
                assert answer.status_code == 403, (method, path, role, answer.text)
        checked += 1
    assert checked == len(EXPECTED_ROLES)


async def test_public_routes_answer_without_credentials(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/wall")).status_code == 200
    assert (await client.get("/wall/static/wall.js")).status_code == 200
    login = await client.post("/api/v1/auth/token", data={"username": "x", "password": "y"})
    assert login.status_code == 401
