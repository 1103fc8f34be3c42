"""The poller's health windows (recent lags and intervals) hold a fixed amount of memory."""

from __future__ import annotations

import tracemalloc

from edge.polling import BusHealth, DeviceHealth, RecentValues


def test_recent_values_keep_the_last_n_oldest_first() -> None:
    window = RecentValues(4)
    assert not window and list(window) == []
    for v in (1.0, 2.0, 3.0):
        window.append(v)
    assert len(window) == 3 and list(window) == [1.0, 2.0, 3.0]
    for v in (4.0, 5.0, 6.0):
        window.append(v)
    assert len(window) == 4 and list(window) == [3.0, 4.0, 5.0, 6.0]


def test_percentiles_read_the_window() -> None:
    bus = BusHealth("b")
    assert bus.jitter_p99_s() == 0.0
    for i in range(5000):  # more than the window: the oldest 904 fall out
        bus.lags.append(i / 1000)
    assert len(bus.lags) == 4096
    assert bus.jitter_p99_s() == sorted(bus.lags)[4055] == 4.959
    device = DeviceHealth("d", 1.0, False)
    assert device.interval_p99_s() is None
    device.intervals.append(1.2)
    assert device.interval_p99_s() == 1.2


def test_a_full_window_allocates_nothing_more() -> None:
    """A deque(maxlen=4096) of floats grew by ~32 bytes a value until full (RSS growth of a
    loaded gateway); the window is allocated once."""
    bus = BusHealth("b")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            bus.lags.append(i * 0.001)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096  # a deque of 4,096 floats would hold about 130 kB
