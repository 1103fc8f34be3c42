"""The helpers that tests and benchmarks lean on."""

from __future__ import annotations

import pytest

from bench._harness import percentile
from tests.support import wait_until


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="waiting for nothing"):
        wait_until(lambda: False, 0.05, "nothing")


def test_wait_until_returns_the_condition_value() -> None:
    calls = iter([0, 0, 7])
    assert wait_until(lambda: next(calls), 5, "third call") == 7


@pytest.mark.parametrize(
    ("q", "expected"), [(50, 50.0), (99, 99.0), (100, 100.0), (1, 1.0), (0, 1.0)]
)
def test_nearest_rank_percentile(q: float, expected: float) -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
