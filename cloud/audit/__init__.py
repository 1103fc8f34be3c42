"""The tamper-evident audit trail: an append-only, hash-chained table.

Every row holds the SHA-256 of the previous row's hash and its own fields (a
canonical JSON encoding), so editing, deleting or inserting a row breaks the chain
at that row, which :meth:`AuditLog.verify` reports. Appends are serialised
(PostgreSQL advisory lock; on SQLite the unique chain columns make a racing
append fail and retry), so concurrent writers never fork the chain.

Call :meth:`AuditLog.record` for every security-relevant change: logins, user and
token changes, configuration changes, acknowledgements, shelving, overrides,
calibrations, lockout tests and hazard transitions (:class:`AuditAction`).
"""

from cloud.audit._log import (
    GENESIS,
    AuditAction,
    AuditBase,
    AuditEntry,
    AuditLog,
    ChainProblem,
    VerifyReport,
    entry_hash,
)

__all__ = [
    "GENESIS",
    "AuditAction",
    "AuditBase",
    "AuditEntry",
    "AuditLog",
    "ChainProblem",
    "VerifyReport",
    "entry_hash",
]
