"""Who is calling: password logins, access tokens (JWT), machine API tokens, key rotation.

* Passwords are stored as argon2 hashes (pwdlib). A login is rate limited per user
  name and per client address, and audited either way.
* Access tokens are HS256 JWTs with an expiry, signed by the newest active signing
  key and carrying its ``kid``; every active key verifies, so rotating a key
  (``safewatch keys rotate``) does not log anyone out, and retiring the old one
  (``safewatch keys retire``) ends the tokens it signed.
* Each request re-reads the user: a disabled user, a changed password or role ends
  every token issued before the change.
* Machine tokens (``swt.<id>.<secret>``) are stored as the SHA-256 of their random
  secret; they carry a role, may expire and can be revoked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from pwdlib import PasswordHash

from cloud.audit import AuditAction, AuditLog
from cloud.auth._limiter import LoginLimiter, RateLimited
from cloud.auth._store import (
    ApiTokenRecord,
    AuthStore,
    Role,
    SigningKey,
    UnknownUser,
    UserRecord,
    valid_username,
)

__all__ = [
    "AccessToken",
    "AuthError",
    "Authenticator",
    "InvalidRequest",
    "LoginFailed",
    "NotAuthenticated",
    "Principal",
]

ISSUER = "safewatch"
AUDIENCE = "safewatch-api"
ALGORITHM = "HS256"
TOKEN_PREFIX = "swt"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_LEEWAY_S = 5
_KEY_REFRESH_S = 30.0
_UNKNOWN_KID_REFRESH_S = 1.0
_RATE_LIMIT_AUDIT_S = 60.0


class AuthError(Exception):
    """Base of the authentication errors (database failures are ``StoreError``)."""


class NotAuthenticated(AuthError):
    """The bearer token is missing, malformed, expired, revoked or its user is disabled."""


class LoginFailed(AuthError):
    """Wrong user name or password, or a disabled user (callers are not told which)."""


class InvalidRequest(AuthError, ValueError):
    """A change that is not allowed (weak password, bad name, last admin...)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user or a machine token."""

    name: str
    role: Role
    kind: Literal["user", "token"]


@dataclass(frozen=True, slots=True)
class AccessToken:
    access_token: str
    expires_in: int
    token_type: str = "bearer"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Authenticator:
    """Everything the API and the CLI need to authenticate and manage principals."""

    def __init__(
        self,
        store: AuthStore,
        audit: AuditLog,
        *,
        access_ttl_s: int = 3600,
        hasher: PasswordHash | None = None,
        limiter: LoginLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.access_ttl_s = access_ttl_s
        self.hasher = hasher or PasswordHash.recommended()
        self.limiter = limiter or LoginLimiter()
        self._clock = clock
        self._dummy_hash: str | None = None  # made on first use: hashing takes ~0.3 s
        self._keys: dict[str, SigningKey] = {}
        self._newest: SigningKey | None = None
        self._keys_read_at = float("-inf")
        self._keys_lock = threading.Lock()
        self._rate_audited: dict[str, float] = {}

    # -- signing keys ---------------------------------------------------------------------

    def _refresh_keys(self, *, older_than: float) -> None:
        with self._keys_lock:
            now = time.monotonic()
            if now - self._keys_read_at < older_than:
                return
            active = self.store.signing_keys()
            self._keys = {k.kid: k for k in active}
            self._newest = active[0] if active else None
            self._keys_read_at = now

    def _verification_key(self, kid: str) -> SigningKey | None:
        self._refresh_keys(older_than=_KEY_REFRESH_S)
        if kid not in self._keys:
            self._refresh_keys(older_than=_UNKNOWN_KID_REFRESH_S)
        return self._keys.get(kid)

    def _signing_key(self) -> SigningKey:
        self._refresh_keys(older_than=_KEY_REFRESH_S)
        if self._newest is None:
            self.rotate_key(actor="system")
        assert self._newest is not None
        return self._newest

    def rotate_key(self, actor: str) -> SigningKey:
        """Add a new signing key; it signs from now on, older active keys still verify."""
        kid = f"{int(self._clock())}-{secrets.token_hex(4)}"
        key = self.store.add_key(kid, secrets.token_urlsafe(48))
        self.audit.record(actor, AuditAction.SIGNING_KEY_ADDED, kid)
        self._keys_read_at = float("-inf")
        self._refresh_keys(older_than=0)
        return key

    def retire_key(self, kid: str, actor: str) -> bool:
        """Stop a key verifying (tokens it signed are refused). False if unknown/retired."""
        done = self.store.retire_key(kid)
        if done:
            self.audit.record(actor, AuditAction.SIGNING_KEY_RETIRED, kid)
            self._keys_read_at = float("-inf")
        return done

    # -- users ----------------------------------------------------------------------------

    def _check_password(self, password: str) -> None:
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidRequest(
                f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters"
            )

    def add_user(self, username: str, password: str, role: Role, actor: str) -> UserRecord:
        if not valid_username(username):
            raise InvalidRequest(
                "a user name is 1-64 letters, digits or . _ @ - and starts with a letter or digit"
            )
        self._check_password(password)
        user = self.store.add_user(username, self.hasher.hash(password), role)
        self.audit.record(actor, AuditAction.USER_ADDED, username, {"role": role.value})
        return user

    def set_password(self, username: str, password: str, actor: str) -> UserRecord:
        self._check_password(password)
        user = self.store.set_password_hash(username, self.hasher.hash(password))
        self.audit.record(actor, AuditAction.PASSWORD_CHANGED, username)
        return user

    def _keep_an_admin(self, username: str) -> None:
        user = self.store.user(username)
        if user.role == Role.ADMIN and not user.disabled and self.store.active_admins() <= 1:
            raise InvalidRequest(f"{username!r} is the last active admin")

    def set_disabled(self, username: str, disabled: bool, actor: str) -> UserRecord:
        if disabled:
            self._keep_an_admin(username)
        user = self.store.set_disabled(username, disabled)
        action = AuditAction.USER_DISABLED if disabled else AuditAction.USER_ENABLED
        self.audit.record(actor, action, username)
        return user

    def set_role(self, username: str, role: Role, actor: str) -> UserRecord:
        if role != Role.ADMIN:
            self._keep_an_admin(username)
        before = self.store.user(username).role
        user = self.store.set_role(username, role)
        self.audit.record(
            actor, AuditAction.USER_ROLE_CHANGED, username, {"from": before, "to": role.value}
        )
        return user

    # -- machine tokens -------------------------------------------------------------------

    def create_token(
        self, name: str, role: Role, actor: str, expires_in: dt.timedelta | None = None
    ) -> tuple[str, ApiTokenRecord]:
        """A new API token; the returned secret string is shown once and never stored."""
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        expires_at = None if expires_in is None else _utcnow() + expires_in
        record = self.store.add_token(
            token_id, name, role, _sha256(secret), created_by=actor, expires_at=expires_at
        )
        self.audit.record(
            actor,
            AuditAction.TOKEN_CREATED,
            token_id,
            {"name": name, "role": role.value, "expires_at": str(expires_at or "")},
        )
        return f"{TOKEN_PREFIX}.{token_id}.{secret}", record

    def revoke_token(self, token_id: str, actor: str) -> ApiTokenRecord:
        record = self.store.revoke_token(token_id)
        self.audit.record(actor, AuditAction.TOKEN_REVOKED, token_id, {"name": record.name})
        return record

    # -- login and authentication ---------------------------------------------------------

    def _audit_rate_limited(self, username: str, address: str, exc: RateLimited) -> None:
        key = f"{exc.what}:{address if exc.what == 'client address' else username}"
        now = time.monotonic()
        if now - self._rate_audited.get(key, float("-inf")) < _RATE_LIMIT_AUDIT_S:
            return
        if len(self._rate_audited) > 10_000:
            self._rate_audited.clear()
        self._rate_audited[key] = now
        self.audit.record(
            username, AuditAction.LOGIN_RATE_LIMITED, username, {"address": address, "by": exc.what}
        )

    def login(self, username: str, password: str, address: str) -> AccessToken:
        """Check a password and issue an access token.

        Raises :class:`RateLimited`, :class:`LoginFailed` or ``StoreError``.
        """
        try:
            self.limiter.attempt(username, address)
        except RateLimited as exc:
            self._audit_rate_limited(username, address, exc)
            raise
        user = self.store.find_user(username) if valid_username(username) else None
        if len(password) > MAX_PASSWORD:
            ok = False
        elif user is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
            self.hasher.verify(password, self._dummy_hash)  # same time as a real check
            ok = False
        else:
            ok = self.hasher.verify(password, user.password_hash) and not user.disabled
        if user is None or not ok:
            self.limiter.failed(username)
            reason = "unknown user" if user is None else "disabled" if user.disabled else "password"
            self.audit.record(
                username, AuditAction.LOGIN_FAILED, username, {"address": address, "why": reason}
            )
            raise LoginFailed("wrong user name or password")
        self.limiter.succeeded(username)
        token = self.issue(user)
        self.audit.record(username, AuditAction.LOGIN, username, {"address": address})
        return token

    def issue(self, user: UserRecord) -> AccessToken:
        """An access token for ``user`` (no password check: for login and tests)."""
        key = self._signing_key()
        now = self._clock()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user.username,
            "role": user.role.value,
            "iat": now,
            "exp": int(now) + self.access_ttl_s,
            "jti": uuid.uuid4().hex,
        }
        encoded = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
        return AccessToken(encoded, self.access_ttl_s)

    def authenticate(self, bearer: str) -> Principal:
        """The caller behind a bearer token; :class:`NotAuthenticated` if none."""
        if bearer.startswith(f"{TOKEN_PREFIX}."):
            return self._machine(bearer)
        return self._user(bearer)

    def _machine(self, bearer: str) -> Principal:
        parts = bearer.split(".")
        if len(parts) != 3 or not parts[1] or not parts[2] or len(parts[1]) > 32:
            raise NotAuthenticated("malformed API token")
        record = self.store.token(parts[1])
        if record is None or not hmac.compare_digest(record.secret_sha256, _sha256(parts[2])):
            raise NotAuthenticated("unknown API token")
        if not record.usable(_utcnow()):
            raise NotAuthenticated("API token revoked or expired")
        return Principal(name=f"token:{record.name}", role=record.role, kind="token")

    def _user(self, bearer: str) -> Principal:
        if len(bearer) > 4096:
            raise NotAuthenticated("malformed access token")
        try:
            header = jwt.get_unverified_header(bearer)
        except jwt.PyJWTError as exc:
            raise NotAuthenticated("malformed access token") from exc
        kid = header.get("kid")
        key = self._verification_key(kid) if isinstance(kid, str) and len(kid) <= 32 else None
        if key is None:
            raise NotAuthenticated("access token signed by an unknown or retired key")
        try:
            claims = jwt.decode(
                bearer,
                key.secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise NotAuthenticated("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise NotAuthenticated("invalid access token") from exc
        username = claims["sub"]
        try:
            user = self.store.user(str(username))
        except UnknownUser as exc:
            raise NotAuthenticated("the token's user no longer exists") from exc
        if user.disabled:
            raise NotAuthenticated("user disabled")
        if float(claims["iat"]) < user.not_before.timestamp():
            raise NotAuthenticated("access token issued before the user's last change")
        return Principal(name=user.username, role=user.role, kind="user")
