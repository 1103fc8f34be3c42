"""Keep protocol libraries from flooding the gateway's log.

A bad unit made pymodbus write 262 lines a minute, multi-line frame dumps
included. :class:`RateLimitFilter` keeps the first line of each record, lets
``burst`` records of one kind through per ``window_s`` and then counts; the
next record of that kind after the window says how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitFilter", "limit_library_logs"]


class RateLimitFilter(logging.Filter):
    def __init__(
        self,
        burst: int = 5,
        window_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1000,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._max_kinds = max_kinds
        self._kinds: dict[tuple[str, int], list[float | int]] = {}  # [window start, seen]
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg).split("\n", 1)[0][:80]
        key = (template, record.levelno)
        now = self._clock()
        state = self._kinds.get(key)
        if state is None or now - state[0] >= self.window_s:
            dropped = int(state[1]) - self.burst if state is not None else 0
            if len(self._kinds) >= self._max_kinds:
                self._kinds.clear()
            self._kinds[key] = [now, 1]
            self._one_line(record, max(0, dropped))
            return True
        state[1] = int(state[1]) + 1
        if state[1] <= self.burst:
            self._one_line(record, 0)
            return True
        self.suppressed += 1
        return False

    def _one_line(self, record: logging.LogRecord, dropped: int) -> None:
        text = record.getMessage()
        first = text.split("\n", 1)[0]
        if len(first) > 300:
            first = first[:300] + "..."
        if dropped:
            first += f" ({dropped} similar message(s) suppressed in the last {self.window_s:.0f} s)"
        record.msg, record.args = first, None
        record.exc_info = record.exc_text = None
        record.stack_info = None


_installed: set[str] = set()


def limit_library_logs(*names: str, burst: int = 5, window_s: float = 60.0) -> None:
    """Install one :class:`RateLimitFilter` on each named library logger (idempotent)."""
    for name in names:
        if name in _installed:
            continue
        logging.getLogger(name).addFilter(RateLimitFilter(burst, window_s))
        _installed.add(name)
