"""Keep asyncua's logging from flooding the gateway's log.

While a server is down asyncua logs the same warning (often with a
traceback) on every probe and every reconnect attempt. :class:`RateLimitFilter`
lets each message template through at most once per ``interval_s`` per
logger, and says how many copies it held back when it lets the next one
through. asyncua's chatty INFO records (one per publish response) are
dropped unless someone set the ``asyncua`` logger's level explicitly.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitFilter", "quieten_asyncua"]


class RateLimitFilter(logging.Filter):
    """At most one record per (logger, template) each ``interval_s``."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            self.suppressed += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar message(s) held back)"
        if len(self._last) > 10_000:  # templates are few; bound it anyway
            self._last.clear()
        return True


_FILTER = RateLimitFilter()


def quieten_asyncua() -> RateLimitFilter:
    """Install the filter on asyncua's loggers once; return it (tests read its count)."""
    root = logging.getLogger("asyncua")
    if root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    # a logger's filter sees only records made by that very logger, not its
    # children: attach it to every asyncua logger that exists (asyncua makes
    # them at import time, one per module)
    names = [
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith(("asyncua", "asyncuagds"))
    ]
    for name in ["asyncua", *names]:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    return _FILTER
