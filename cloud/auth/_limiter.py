"""Login rate limits: failures per user name, attempts per client address."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LimiterSettings", "LoginLimiter", "RateLimited"]


class RateLimited(Exception):
    """Too many login attempts; try again after ``retry_after`` seconds."""

    def __init__(self, what: str, retry_after: float) -> None:
        super().__init__(f"too many login attempts for this {what}")
        self.what = what
        self.retry_after = max(1, math.ceil(retry_after))


class _Windows:
    """Sliding windows of event times per key; bounded number of keys (oldest evicted)."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _trimmed(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str, now: float) -> float | None:
        events = self._trimmed(key, now)
        if events is None or len(events) < self.limit:
            return None
        return events[0] + self.window_s - now

    def add(self, key: str, now: float) -> None:
        events = self._trimmed(key, now)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        events.append(now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)


@dataclass(frozen=True)
class LimiterSettings:
    failures_per_user: int = 5
    user_window_s: float = 300.0
    attempts_per_address: int = 30
    address_window_s: float = 60.0
    max_keys: int = 10_000


class LoginLimiter:
    """In-process limits (one cloud process; several workers each keep their own).

    A user name is locked for the rest of its window after ``failures_per_user``
    failed logins; a client address after ``attempts_per_address`` attempts of any
    outcome. A successful login clears its user's failures.
    """

    def __init__(
        self,
        settings: LimiterSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        s = settings or LimiterSettings()
        self._users = _Windows(s.failures_per_user, s.user_window_s, s.max_keys)
        self._addresses = _Windows(s.attempts_per_address, s.address_window_s, s.max_keys)
        self._clock = clock
        self._lock = threading.Lock()

    def attempt(self, username: str, address: str) -> None:
        """Count an attempt from ``address``; raise :class:`RateLimited` if over a limit."""
        now = self._clock()
        with self._lock:
            wait = self._addresses.retry_after(address, now)
            if wait is not None:
                raise RateLimited("client address", wait)
            self._addresses.add(address, now)
            wait = self._users.retry_after(username, now)
            if wait is not None:
                raise RateLimited("user", wait)

    def failed(self, username: str) -> None:
        with self._lock:
            self._users.add(username, self._clock())

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._users.clear(username)
