"""The shared backoff policy (wire.backoff): bounds, growth, cap, reset."""

from __future__ import annotations

import pytest

from wire.backoff import Backoff


def test_delays_grow_to_the_cap_with_jitter_inside_the_bounds() -> None:
    backoff = Backoff(initial=0.5, cap=4.0)
    delays = [backoff.next_delay() for _ in range(50)]
    for n, delay in enumerate(delays):
        assert 0.25 <= delay <= min(4.0, 0.5 * 2**n)
    assert backoff.attempt == 50
    assert max(delays[10:]) <= 4.0
    assert len({round(d, 6) for d in delays[10:]}) > 1  # jittered, not lock step


def test_reset_starts_short_again() -> None:
    backoff = Backoff(initial=1.0, cap=60.0)
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 1.0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0, cap=1)
    with pytest.raises(ValueError):
        Backoff(initial=2, cap=1)
