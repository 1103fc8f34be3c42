"""Cloud API authentication: users, roles, access tokens, machine tokens, login limits.

A service package in its own right: its tables (``AuthStore``), its logic
(``Authenticator``) and its router (``auth_router``); the API mounts the router and
guards every other route with ``Guards``.
"""

from cloud.auth._api import TOKEN_URL, ErrorOut, Guards, RoleGuard, auth_router, error_responses
from cloud.auth._limiter import LimiterSettings, LoginLimiter, RateLimited
from cloud.auth._service import (
    AccessToken,
    Authenticator,
    AuthError,
    InvalidRequest,
    LoginFailed,
    NotAuthenticated,
    Principal,
)
from cloud.auth._store import (
    ALL_ROLES,
    ApiTokenRecord,
    AuthBase,
    AuthStore,
    DuplicateUser,
    Role,
    SigningKey,
    UnknownToken,
    UnknownUser,
    UserRecord,
)

__all__ = [
    "ALL_ROLES",
    "TOKEN_URL",
    "AccessToken",
    "ApiTokenRecord",
    "AuthBase",
    "AuthError",
    "AuthStore",
    "Authenticator",
    "DuplicateUser",
    "ErrorOut",
    "Guards",
    "InvalidRequest",
    "LimiterSettings",
    "LoginFailed",
    "LoginLimiter",
    "NotAuthenticated",
    "Principal",
    "RateLimited",
    "Role",
    "RoleGuard",
    "SigningKey",
    "UnknownToken",
    "UnknownUser",
    "UserRecord",
    "auth_router",
    "error_responses",
]
