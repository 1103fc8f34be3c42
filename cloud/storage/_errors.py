"""Errors of the cloud storage layer.

StorageError
├── InfluxError
│   ├── InfluxUnavailable   server unreachable, 5xx after retries, auth or unknown database;
│   │                       the lines stay queued and are tried again
│   └── InfluxRejected      4xx: InfluxDB refused the lines (bad syntax, field type conflict,
│                           partial write); the lines are dropped and counted, never retried
└── StoreError              the relational store (SQLite/PostgreSQL) failed or is unsupported:
    │                       down, locked, full; try again later
    └── StoreRejected       the database refused this data (constraint, value too long):
                            trying again will not help
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error raised by :mod:`cloud.storage`."""


class InfluxError(StorageError):
    """InfluxDB could not take the lines."""


class InfluxUnavailable(InfluxError):
    """InfluxDB is unreachable or failing; queued lines are kept."""


class InfluxRejected(InfluxError):
    """InfluxDB refused the lines (4xx); they are dropped and counted."""

    def __init__(self, message: str, rejected: int) -> None:
        super().__init__(message)
        self.rejected = rejected


class StoreError(StorageError):
    """The relational store failed."""


class StoreRejected(StoreError):
    """The database refused the data itself (integrity or data error), not its availability."""
