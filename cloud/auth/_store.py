"""Users, machine API tokens and JWT signing keys in the cloud database (own tables)."""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloud.storage import StoreError

__all__ = [
    "ALL_ROLES",
    "ApiTokenRecord",
    "AuthBase",
    "AuthStore",
    "DuplicateUser",
    "Role",
    "SigningKey",
    "UnknownToken",
    "UnknownUser",
    "UserRecord",
    "valid_username",
]


class Role(enum.StrEnum):
    """What a user or machine may do. Routes name the roles they admit."""

    ADMIN = "admin"  # users, tokens, keys, everything
    SAFETY_ENGINEER = "safety_engineer"  # configuration, acknowledgements, overrides
    RECTIFIER = "rectifier"  # works hazards off
    REVIEWER = "reviewer"  # reviews rectification, reads the audit trail
    VIEWER = "viewer"  # reads live data


ALL_ROLES: frozenset[Role] = frozenset(Role)

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def valid_username(name: str) -> bool:
    return _USERNAME.fullmatch(name) is not None


class DuplicateUser(ValueError):
    """A user of that name exists."""


class UnknownUser(LookupError):
    """No user of that name."""


class UnknownToken(LookupError):
    """No API token with that id."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class AuthBase(DeclarativeBase):
    pass


class UserRow(AuthBase):
    __tablename__ = "auth_users"

    username: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(sa.String(512))
    role: Mapped[str] = mapped_column(sa.String(32))
    disabled: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    # Access tokens issued before this instant are refused (password change, disable).
    not_before: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class ApiTokenRow(AuthBase):
    __tablename__ = "auth_api_tokens"

    token_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    created_by: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class SigningKeyRow(AuthBase):
    __tablename__ = "auth_signing_keys"

    kid: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    retired_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


_USERS = cast(sa.Table, UserRow.__table__)
_TOKENS = cast(sa.Table, ApiTokenRow.__table__)
_KEYS = cast(sa.Table, SigningKeyRow.__table__)


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    role: Role
    disabled: bool
    created_at: dt.datetime
    not_before: dt.datetime
    password_hash: str


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    token_id: str
    name: str
    role: Role
    secret_sha256: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def usable(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: str
    created_at: dt.datetime
    retired_at: dt.datetime | None


def _user(r: sa.Row[tuple[object, ...]]) -> UserRecord:
    m = r._mapping
    return UserRecord(
        username=m["username"],
        role=Role(m["role"]),
        disabled=bool(m["disabled"]),
        created_at=_aware(m["created_at"]) or _utcnow(),
        not_before=_aware(m["not_before"]) or _utcnow(),
        password_hash=m["password_hash"],
    )


def _token(r: sa.Row[tuple[object, ...]]) -> ApiTokenRecord:
    m = r._mapping
    return ApiTokenRecord(
        token_id=m["token_id"],
        name=m["name"],
        role=Role(m["role"]),
        secret_sha256=m["secret_sha256"],
        created_by=m["created_by"],
        created_at=_aware(m["created_at"]) or _utcnow(),
        expires_at=_aware(m["expires_at"]),
        revoked_at=_aware(m["revoked_at"]),
    )


class AuthStore:
    """Blocking reads and writes of the auth tables; :class:`StoreError` on DB failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (DuplicateUser, UnknownUser, UnknownToken):
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"auth store: {exc}") from exc

    def create_all(self) -> None:
        with self._begin() as conn:
            AuthBase.metadata.create_all(conn)

    # -- users ----------------------------------------------------------------------------

    def add_user(self, username: str, password_hash: str, role: Role) -> UserRecord:
        now = _utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    _USERS.insert().values(
                        username=username,
                        password_hash=password_hash,
                        role=role.value,
                        disabled=False,
                        created_at=now,
                        not_before=now - dt.timedelta(seconds=1),
                    )
                )
        except IntegrityError as exc:
            raise DuplicateUser(f"user {username!r} exists") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"auth store: {exc}") from exc
        return self.user(username)

    def user(self, username: str) -> UserRecord:
        with self._begin() as conn:
            row = conn.execute(sa.select(_USERS).where(_USERS.c.username == username)).first()
        if row is None:
            raise UnknownUser(f"no user {username!r}")
        return _user(row)

    def find_user(self, username: str) -> UserRecord | None:
        try:
            return self.user(username)
        except UnknownUser:
            return None

    def users(self) -> list[UserRecord]:
        with self._begin() as conn:
            rows = conn.execute(sa.select(_USERS).order_by(_USERS.c.username)).all()
        return [_user(r) for r in rows]

    def _update_user(self, username: str, **values: object) -> UserRecord:
        with self._begin() as conn:
            done = conn.execute(
                _USERS.update().where(_USERS.c.username == username).values(**values)
            )
            if done.rowcount == 0:
                raise UnknownUser(f"no user {username!r}")
        return self.user(username)

    def set_disabled(self, username: str, disabled: bool) -> UserRecord:
        return self._update_user(username, disabled=disabled, not_before=_utcnow())

    def set_password_hash(self, username: str, password_hash: str) -> UserRecord:
        return self._update_user(username, password_hash=password_hash, not_before=_utcnow())

    def set_role(self, username: str, role: Role) -> UserRecord:
        return self._update_user(username, role=role.value, not_before=_utcnow())

    def active_admins(self) -> int:
        with self._begin() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(
                    _USERS.c.role == Role.ADMIN.value, _USERS.c.disabled.is_(False)
                )
            ).scalar_one()
        return int(count)

    # -- API tokens -----------------------------------------------------------------------

    def add_token(
        self,
        token_id: str,
        name: str,
        role: Role,
        secret_sha256: str,
        created_by: str,
        expires_at: dt.datetime | None,
    ) -> ApiTokenRecord:
        with self._begin() as conn:
            conn.execute(
                _TOKENS.insert().values(
                    token_id=token_id,
                    name=name,
                    role=role.value,
                    secret_sha256=secret_sha256,
                    created_by=created_by,
                    created_at=_utcnow(),
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
        found = self.token(token_id)
        assert found is not None
        return found

    def token(self, token_id: str) -> ApiTokenRecord | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(_TOKENS).where(_TOKENS.c.token_id == token_id)).first()
        return None if row is None else _token(row)

    def tokens(self) -> list[ApiTokenRecord]:
        with self._begin() as conn:
            rows = conn.execute(sa.select(_TOKENS).order_by(_TOKENS.c.created_at)).all()
        return [_token(r) for r in rows]

    def revoke_token(self, token_id: str) -> ApiTokenRecord:
        with self._begin() as conn:
            done = conn.execute(
                _TOKENS.update()
                .where(_TOKENS.c.token_id == token_id, _TOKENS.c.revoked_at.is_(None))
                .values(revoked_at=_utcnow())
            )
            exists = conn.execute(
                sa.select(_TOKENS.c.token_id).where(_TOKENS.c.token_id == token_id)
            ).first()
        if exists is None:
            raise UnknownToken(f"no API token {token_id!r}")
        del done
        found = self.token(token_id)
        assert found is not None
        return found

    # -- signing keys ---------------------------------------------------------------------

    def add_key(self, kid: str, secret: str) -> SigningKey:
        now = _utcnow()
        with self._begin() as conn:
            conn.execute(_KEYS.insert().values(kid=kid, secret=secret, created_at=now))
        return SigningKey(kid, secret, now, None)

    def signing_keys(self, *, include_retired: bool = False) -> list[SigningKey]:
        """Signing keys, newest first."""
        query = sa.select(_KEYS).order_by(_KEYS.c.created_at.desc(), _KEYS.c.kid.desc())
        if not include_retired:
            query = query.where(_KEYS.c.retired_at.is_(None))
        with self._begin() as conn:
            rows = conn.execute(query).all()
        return [
            SigningKey(
                kid=r.kid,
                secret=r.secret,
                created_at=_aware(r.created_at) or _utcnow(),
                retired_at=_aware(r.retired_at),
            )
            for r in rows
        ]

    def retire_key(self, kid: str) -> bool:
        with self._begin() as conn:
            done = conn.execute(
                _KEYS.update()
                .where(_KEYS.c.kid == kid, _KEYS.c.retired_at.is_(None))
                .values(retired_at=_utcnow())
            )
        return bool(done.rowcount)
