"""Load a site's own histories into :class:`History`, the shape the generators make.

- CSV: a header row with ``time`` and ``value`` (and optionally ``label``);
  ``time`` is Unix seconds or ISO 8601 (``2026-01-02T03:04:05Z``).
- Parquet: the same columns; needs ``pyarrow``, which SafeWatch does not
  install (``pip install pyarrow``).
- InfluxDB (what the cloud writes): measurement = the sensor kind, field
  ``value``, tags ``tag``/``device``/``area``/``site``...; queried with InfluxQL
  over the v1 HTTP API (InfluxDB 1.x, and 2.x/3.x through their v1 API).

Every error names the file (or query) and the row or field at fault.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from simulators.synthetic._history import History, HistoryError

__all__ = ["load_csv", "load_influx", "load_parquet"]


def _time_of(text: str, where: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise HistoryError(f"{where}: time {text!r} is neither Unix seconds nor ISO 8601") from None


def _finish(
    source: str,
    tag: str,
    kind: str,
    unit: str,
    times: list[float],
    values: list[float],
    labels: list[int] | None,
) -> History:
    if not times:
        raise HistoryError(f"{source}: no samples")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    if np.any(np.diff(t) == 0):
        dup = float(t[1:][np.diff(t) == 0][0])
        raise HistoryError(f"{source}: two samples at time {dup}")
    return History(
        tag=tag,
        kind=kind,
        unit=unit,
        t_s=t,
        values=np.asarray(values, dtype=np.float64)[order],
        labels=None if labels is None else np.asarray(labels, dtype=np.int64)[order],
    )


def _value_of(raw: Any, where: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise HistoryError(f"{where}: value {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise HistoryError(f"{where}: value {raw!r} is not finite")
    return value


def load_csv(path: str | Path, *, tag: str, kind: str, unit: str = "") -> History:
    """One sensor's history from a CSV file with ``time,value[,label]`` columns."""
    path = Path(path)
    times: list[float] = []
    values: list[float] = []
    labels: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            for need in ("time", "value"):
                if need not in fields:
                    raise HistoryError(
                        f"{path}: no {need!r} column (found: {', '.join(fields) or 'none'})"
                    )
            has_label = "label" in fields
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not (row.get("value") or "").strip():
                    continue  # a gap in the record, not an error
                times.append(_time_of(row["time"] or "", where))
                values.append(_value_of(row["value"], where))
                if has_label:
                    labels.append(int(_value_of(row["label"], where)))
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{path}: not UTF-8 text") from exc
    return _finish(str(path), tag, kind, unit, times, values, labels if has_label else None)


def load_parquet(path: str | Path, *, tag: str, kind: str, unit: str = "") -> History:
    """Like :func:`load_csv` for a Parquet file (``time`` as Unix seconds or a timestamp)."""
    path = Path(path)
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise HistoryError(
            f"{path}: reading Parquet needs pyarrow, which SafeWatch does not install "
            "(pip install pyarrow), or export the history as CSV"
        ) from exc
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise HistoryError(f"{path}: cannot read as Parquet: {exc}") from exc
    for need in ("time", "value"):
        if need not in table.column_names:
            raise HistoryError(
                f"{path}: no {need!r} column (found: {', '.join(table.column_names)})"
            )
    raw_t = table.column("time").to_pylist()
    times = [
        v.timestamp() if isinstance(v, datetime) else _value_of(v, f"{path}: row {i} time")
        for i, v in enumerate(raw_t)
    ]
    values = [
        _value_of(v, f"{path}: row {i} value")
        for i, v in enumerate(table.column("value").to_pylist())
    ]
    labels = None
    if "label" in table.column_names:
        labels = [
            int(_value_of(v, f"{path}: row {i} label"))
            for i, v in enumerate(table.column("label").to_pylist())
        ]
    return _finish(str(path), tag, kind, unit, times, values, labels)


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_influx(
    url: str,
    database: str,
    *,
    kind: str,
    tag: str,
    start: str = "now() - 30d",
    end: str = "now()",
    unit: str = "",
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 30.0,
) -> History:
    """One tag's ``value`` field from measurement ``kind`` between ``start`` and ``end``.

    ``start``/``end`` are InfluxQL time expressions (``now() - 7d``) or RFC 3339
    strings. Points without a value (bad quality) are left out.
    """

    def bound(expr: str) -> str:
        return expr if "now()" in expr else _quote_str(expr)

    query = (
        f"SELECT {_quote_ident('value')} FROM {_quote_ident(kind)} "
        f"WHERE {_quote_ident('tag')} = {_quote_str(tag)} "
        f"AND time >= {bound(start)} AND time <= {bound(end)} ORDER BY time ASC"
    )
    source = f"influx {url} db {database!r} query {query!r}"
    params = {"db": database, "q": query, "epoch": "ns"}
    auth = (username, password or "") if username else None
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/query", params=params, auth=auth, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise HistoryError(f"{source}: {exc}") from exc
    if response.status_code != 200:
        raise HistoryError(f"{source}: HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    results = body.get("results") or [{}]
    if "error" in results[0]:
        raise HistoryError(f"{source}: {results[0]['error']}")
    times: list[float] = []
    values: list[float] = []
    for series in results[0].get("series", []):
        columns = series.get("columns", [])
        ti, vi = columns.index("time"), columns.index("value")
        for row in series.get("values", []):
            if row[vi] is None:
                continue
            times.append(int(row[ti]) / 1e9)
            values.append(_value_of(row[vi], f"{source}: time {row[ti]}"))
    return _finish(source, tag, kind, unit, times, values, None)
