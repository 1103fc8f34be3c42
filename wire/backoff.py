"""The one reconnect/retry backoff policy of SafeWatch, shared by the edge and the cloud.

It lives in ``wire`` because ``wire`` is the one package both the gateway
(``edge``) and the cloud may import (import-linter contracts in
``pyproject.toml``); it imports nothing but the standard library.

Policy: capped exponential backoff with jitter. The n-th consecutive failure
(n from 0) waits a uniformly random time in ``[initial / 2, min(cap, initial *
2**n)]``: short after a first failure, never more than ``cap``, and spread so
that many gateways (or ingest workers) losing the same broker do not come back
in lock step. ``reset()`` after a success, so the next outage starts short
again.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Capped, jittered exponential backoff for loops that retry forever."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Consecutive failures since the last :meth:`reset`."""
        return self._attempt

    def next_delay(self) -> float:
        """The wait before the next try (seconds); counts one more failure."""
        ceiling = min(self.cap, self.initial * (2 ** min(self._attempt, 32)))
        self._attempt += 1
        return random.uniform(self.initial / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
