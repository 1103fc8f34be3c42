"""Library log records are one line each and rate-limited per kind."""

from __future__ import annotations

import logging

import pytest

from device_drivers._logs import RateLimitFilter


def test_bursts_pass_then_are_counted_and_reported() -> None:
    now = [0.0]
    limit = RateLimitFilter(burst=3, window_s=60, clock=lambda: now[0])
    logger = logging.getLogger("test.limits")
    logger.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    logger.addFilter(limit)
    for i in range(262):  # what one bad unit produced in a minute
        logger.error("ERROR: request ask for id=%d but got id=9, Skipping.\n0x01 0x03 ...", i)
        now[0] += 0.2
    logger.warning("another kind")
    assert len(records) == 4 and limit.suppressed == 259
    assert all("\n" not in r.getMessage() for r in records)
    now[0] += 60
    logger.error("ERROR: request ask for id=%d but got id=9, Skipping.\n0x01", 1)
    assert "259 similar message(s) suppressed" in records[-1].getMessage()


@pytest.mark.parametrize("length", [10, 5000])
def test_long_lines_are_cut(length: int) -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a" * length, None, None)
    assert RateLimitFilter().filter(record)
    assert len(record.getMessage()) <= 303
