"""EEMUA 191 / ISA-18.2 alarm-rate figures, shared by the gateway CLI and the cloud API.

Pure arithmetic over *raises* (an alarm annunciated to an operator) within a
period: no I/O, so both sides compute the same figures from their own records.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

__all__ = ["alarm_kpis", "chattering", "console_kpis"]

WINDOW_NS = 600 * 10**9  # EEMUA 191 counts alarms per 10 minutes


def chattering(raises: Iterable[tuple[int, str]], transitions: int, window_s: float) -> set[str]:
    """Alarms raised ``transitions`` times within ``window_s`` at least once."""
    seen: dict[str, collections.deque[int]] = {}
    found: set[str] = set()
    for ts_ns, key in sorted(raises):
        times = seen.setdefault(key, collections.deque(maxlen=transitions))
        times.append(ts_ns)
        if len(times) >= transitions and ts_ns - times[0] <= window_s * 1e9:
            found.add(key)
    return found


def alarm_kpis(
    raises: Iterable[tuple[int, str]],
    start_ns: int,
    end_ns: int,
    *,
    operators: int = 1,
    flood_per_10min: int = 10,
    chatter_transitions: int = 5,
    chatter_window_s: float = 60.0,
    suppressed: Iterable[str] = (),
    standing: Iterable[tuple[str, int]] = (),
    stale_s: float = 24 * 3600.0,
) -> dict[str, Any]:
    """Figures over ``[start_ns, end_ns)``; ``raises`` are (ts_ns, alarm key) pairs.

    Flood: a 10-minute window (aligned to ``start_ns``) with more than
    ``flood_per_10min`` alarms per operator. ``standing``: (key, active since)
    of the alarms active at ``end_ns``; stale when older than ``stale_s``.
    """
    span = max(end_ns - start_ns, 1)
    buckets = [0] * max(1, -(-span // WINDOW_NS))
    counted: collections.Counter[str] = collections.Counter()
    inside = [(ts, key) for ts, key in raises if start_ns <= ts < end_ns]
    for ts, key in inside:
        buckets[(ts - start_ns) // WINDOW_NS] += 1
        counted[key] += 1
    per_op = [b / max(operators, 1) for b in buckets]
    standing = list(standing)
    return {
        "period_s": span / 1e9,
        "operators": operators,
        "alarms": len(inside),
        "avg_per_10min_per_operator": round(sum(per_op) / len(per_op), 3),
        "peak_per_10min_per_operator": max(per_op),
        "flood_share": round(sum(1 for b in per_op if b > flood_per_10min) / len(per_op), 4),
        "top10": [{"alarm": k, "count": n} for k, n in counted.most_common(10)],
        "chattering": sorted(
            set(suppressed) | chattering(inside, chatter_transitions, chatter_window_s)
        ),
        "standing": sorted(key for key, _ in standing),
        "stale": sorted(key for key, since in standing if end_ns - since > stale_s * 1e9),
    }


def console_kpis(
    raises: Iterable[tuple[int, str, str]],
    start_ns: int,
    end_ns: int,
    *,
    flood_per_10min: int = 10,
) -> list[dict[str, Any]]:
    """The rate figures per operator console (EEMUA 191 counts alarms per operator):
    ``raises`` are (ts_ns, alarm key, console) triples; one row per console that has raises
    in the period, each console one operator, busiest (peak) first."""
    grouped: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for ts, key, console in raises:
        if start_ns <= ts < end_ns:
            grouped[console].append((ts, key))
    rows = []
    for console, inside in grouped.items():
        figures = alarm_kpis(inside, start_ns, end_ns, flood_per_10min=flood_per_10min)
        rows.append(
            {
                "console": console,
                "alarms": figures["alarms"],
                "avg_per_10min": figures["avg_per_10min_per_operator"],
                "peak_per_10min": figures["peak_per_10min_per_operator"],
                "flood_share": figures["flood_share"],
            }
        )
    return sorted(rows, key=lambda r: (-r["peak_per_10min"], -r["alarms"], r["console"]))
