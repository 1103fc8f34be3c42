"""HTTP side of authentication: role guards, the login route, users/tokens/audit routes."""

# No ``from __future__ import annotations``: route signatures name local guards in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, ConfigDict, Field

from cloud.audit import AuditLog
from cloud.auth._limiter import RateLimited
from cloud.auth._service import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    Authenticator,
    InvalidRequest,
    LoginFailed,
    NotAuthenticated,
    Principal,
)
from cloud.auth._store import ALL_ROLES, DuplicateUser, Role, UnknownToken, UnknownUser

__all__ = [
    "TOKEN_URL",
    "ErrorOut",
    "Guards",
    "RoleGuard",
    "auth_router",
    "error_responses",
]

TOKEN_URL = "/api/v1/auth/token"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"

bearer_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    auto_error=False,
    description="An access token from the login route, or a machine API token (swt....).",
)


class ErrorOut(BaseModel):
    detail: str


_ERROR_TEXT = {
    400: "Bad request",
    401: "Not authenticated: no, an invalid, an expired or a revoked token",
    403: "Authenticated, but the caller's role may not use this route",
    404: "Not found",
    409: "Conflicts with the current state",
    422: "Invalid parameters or body",
    429: "Too many attempts; retry after the Retry-After header's seconds",
    503: "The database is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can return."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": _ERROR_TEXT[code]}
        if code != 422:  # FastAPI documents its own validation error body
            entry["model"] = ErrorOut
        out[code] = entry
    return out


GUARDED_ERRORS = (401, 403, 503)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


class RoleGuard:
    """A route dependency: the caller must be authenticated and hold one of ``roles``.

    Every API route except the public ones depends on exactly one guard; the route
    walk test finds it through this class.
    """

    def __init__(self, authenticator: Authenticator, roles: frozenset[Role]) -> None:
        self.authenticator = authenticator
        self.roles = roles

    def __call__(self, token: Annotated[str | None, Depends(bearer_scheme)]) -> Principal:
        if not token:
            raise _unauthorized("not authenticated")
        try:
            principal = self.authenticator.authenticate(token)
        except NotAuthenticated as exc:
            raise _unauthorized(str(exc)) from exc
        if principal.role not in self.roles:
            needed = ", ".join(sorted(self.roles))
            raise HTTPException(
                status_code=403, detail=f"role {principal.role} may not do this (needs {needed})"
            )
        return principal


class Guards:
    """Makes :class:`RoleGuard` s over one authenticator: ``Depends(guards(Role.ADMIN))``."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def __call__(self, *roles: Role) -> RoleGuard:
        return RoleGuard(self.authenticator, frozenset(roles) if roles else ALL_ROLES)


# -- models -------------------------------------------------------------------------------


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class PrincipalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    role: Role
    kind: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    username: str
    role: Role
    disabled: bool
    created_at: dt.datetime


class UserIn(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    role: Role


class UserPatch(BaseModel):
    disabled: bool | None = None
    role: Role | None = None
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class ApiTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    token_id: str
    name: str
    role: Role
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class ApiTokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role
    expires_days: int | None = Field(default=None, ge=1, le=3650)


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="The secret; shown only in this answer.")


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at_ns: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    details: str
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    problems: list[str]


# -- router -------------------------------------------------------------------------------


def auth_router(authenticator: Authenticator, audit: AuditLog, guards: Guards) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    admin = guards(Role.ADMIN)
    audit_readers = guards(Role.ADMIN, Role.REVIEWER, Role.SAFETY_ENGINEER)

    @router.post(
        "/auth/token",
        response_model=TokenOut,
        tags=["auth"],
        summary="Log in (OAuth2 password flow)",
        responses=error_responses(401, 422, 429, 503),
    )
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=256)],
        password: Annotated[str, Form(max_length=MAX_PASSWORD)],
    ) -> TokenOut:
        address = request.client.host if request.client else "unknown"
        try:
            token = authenticator.login(username, password, address)
        except RateLimited as exc:
            raise HTTPException(
                status_code=429, detail=str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from exc
        except LoginFailed as exc:
            raise _unauthorized(str(exc)) from exc
        return TokenOut(access_token=token.access_token, expires_in=token.expires_in)

    @router.get(
        "/auth/me",
        response_model=PrincipalOut,
        tags=["auth"],
        responses=error_responses(*GUARDED_ERRORS),
    )
    def me(principal: Annotated[Principal, Depends(guards(*ALL_ROLES))]) -> PrincipalOut:
        return PrincipalOut.model_validate(principal)

    @router.get(
        "/users",
        response_model=list[UserOut],
        tags=["users"],
        responses=error_responses(*GUARDED_ERRORS),
    )
    def list_users(_: Annotated[Principal, Depends(admin)]) -> list[UserOut]:
        return [UserOut.model_validate(u) for u in authenticator.store.users()]

    @router.post(
        "/users",
        response_model=UserOut,
        status_code=201,
        tags=["users"],
        responses=error_responses(*GUARDED_ERRORS, 409, 422),
    )
    def add_user(body: UserIn, principal: Annotated[Principal, Depends(admin)]) -> UserOut:
        try:
            user = authenticator.add_user(body.username, body.password, body.role, principal.name)
        except DuplicateUser as exc:
            raise HTTPException(status_code=409, detail="user exists") from exc
        except InvalidRequest as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        return UserOut.model_validate(user)

    @router.patch(
        "/users/{username}",
        response_model=UserOut,
        tags=["users"],
        responses=error_responses(*GUARDED_ERRORS, 404, 409, 422),
    )
    def change_user(
        username: Annotated[str, Path(pattern=USERNAME_PATTERN)],
        body: UserPatch,
        principal: Annotated[Principal, Depends(admin)],
    ) -> UserOut:
        try:
            user = authenticator.store.user(username)
            if body.password is not None:
                user = authenticator.set_password(username, body.password, principal.name)
            if body.role is not None and body.role != user.role:
                user = authenticator.set_role(username, body.role, principal.name)
            if body.disabled is not None and body.disabled != user.disabled:
                user = authenticator.set_disabled(username, body.disabled, principal.name)
        except UnknownUser as exc:
            raise HTTPException(status_code=404, detail="no such user") from exc
        except InvalidRequest as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return UserOut.model_validate(user)

    @router.get(
        "/tokens",
        response_model=list[ApiTokenOut],
        tags=["tokens"],
        responses=error_responses(*GUARDED_ERRORS),
    )
    def list_tokens(_: Annotated[Principal, Depends(admin)]) -> list[ApiTokenOut]:
        return [ApiTokenOut.model_validate(t) for t in authenticator.store.tokens()]

    @router.post(
        "/tokens",
        response_model=ApiTokenCreated,
        status_code=201,
        tags=["tokens"],
        responses=error_responses(*GUARDED_ERRORS, 422),
    )
    def create_token(
        body: ApiTokenIn, principal: Annotated[Principal, Depends(admin)]
    ) -> ApiTokenCreated:
        expires = None if body.expires_days is None else dt.timedelta(days=body.expires_days)
        secret, record = authenticator.create_token(body.name, body.role, principal.name, expires)
        return ApiTokenCreated(token=secret, **ApiTokenOut.model_validate(record).model_dump())

    @router.delete(
        "/tokens/{token_id}",
        response_model=ApiTokenOut,
        tags=["tokens"],
        responses=error_responses(*GUARDED_ERRORS, 404, 422),
    )
    def revoke_token(
        token_id: Annotated[str, Path(max_length=32)],
        principal: Annotated[Principal, Depends(admin)],
    ) -> ApiTokenOut:
        try:
            return ApiTokenOut.model_validate(authenticator.revoke_token(token_id, principal.name))
        except UnknownToken as exc:
            raise HTTPException(status_code=404, detail="no such API token") from exc

    @router.get(
        "/audit",
        response_model=list[AuditOut],
        tags=["audit"],
        responses=error_responses(*GUARDED_ERRORS, 422),
    )
    def list_audit(
        _: Annotated[Principal, Depends(audit_readers)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        actor: Annotated[str | None, Query(max_length=128)] = None,
    ) -> list[AuditOut]:
        rows = audit.entries(limit=limit, before=before, action=action, actor=actor)
        return [AuditOut.model_validate(r) for r in rows]

    @router.get(
        "/audit/verify",
        response_model=VerifyOut,
        tags=["audit"],
        responses=error_responses(*GUARDED_ERRORS),
    )
    def verify_audit(
        _: Annotated[Principal, Depends(guards(Role.ADMIN, Role.REVIEWER))],
    ) -> VerifyOut:
        report = audit.verify()
        return VerifyOut(
            ok=report.ok,
            rows=report.rows,
            head_seq=report.head_seq,
            head_hash=report.head_hash,
            problems=[str(p) for p in report.problems[:100]],
        )

    return router
