"""Telemetry to InfluxDB: a pure line-protocol codec and batching writers.

``to_lines`` turns a :class:`wire.TelemetryBatch` into InfluxDB line protocol
(one measurement per sensor kind; tags site, gateway, area, position, device,
tag, unit; fields value, quality, reason; nanosecond timestamps).

Writers hold no lines of their own: :meth:`write` sends what it is given, now, in
requests of ``batch_lines`` side by side, and reports InfluxDB's real answer (what
it stored and refused); a server that cannot answer raises ``InfluxUnavailable``
and the caller keeps every line (the ingest spools them on disk, in the same
transaction as the sequence marks). An in-memory queue that acked lines before
InfluxDB had them was removed with the ack-after-durable ingest.

- :class:`InfluxV1Writer` speaks the v1 HTTP API (``/write``, ``/query``,
  ``/ping``) with gzip bodies; InfluxDB 2.x/3.x serve that API too.
- :class:`InfluxV2Writer` uses ``influxdb-client`` with token auth (org, bucket).
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import ipaddress
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx
import stamina

import wire
from cloud.storage._errors import InfluxRejected, InfluxUnavailable
from wire.backoff import Backoff

__all__ = [
    "InfluxV1Writer",
    "InfluxV2Writer",
    "LineBuilder",
    "PointWriter",
    "WriteResult",
    "is_loopback",
    "to_lines",
]

log = logging.getLogger(__name__)

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\ ", "\r": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\ ", "\r": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def _measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def _key(text: str) -> str:
    """Escape a tag key, tag value or field key (comma, equals, space)."""
    return text.translate(_KEY_ESCAPES)


def _string_field(text: str) -> str:
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def _prefix(site: str, gateway: str, point: wire.Point) -> str:
    """Measurement and tag set of a point's series, escaped, with the separating space."""
    tags = {
        "area": point.area,
        "device": point.device,
        "gateway": gateway,
        "position": point.position,
        "site": site,
        "tag": point.tag,
        "unit": point.unit,
    }
    # Line protocol has no empty tag values: an empty tag is simply absent.
    tag_part = "".join(f",{_key(k)}={_key(v)}" for k, v in sorted(tags.items()) if v)
    return f"{_measurement(point.kind)}{tag_part} "


_QUALITY_FIELD = {q: f'quality="{q}"' for q in ("good", "uncertain", "bad")}
# What follows a value: ',quality="good" ' (then the timestamp)
_AFTER_VALUE = {q: f",{field} " for q, field in _QUALITY_FIELD.items()}


class LineBuilder:
    """Telemetry batches to line protocol, fast: a series' escaped measurement and tag set
    is built once and cached (a gateway sends the same few hundred series all day).

    The cache is keyed by tag id per (site, gateway) and holds the rest of the series'
    identity beside the prefix: comparing five short strings is cheaper than hashing a
    six-string tuple for every point (``safewatch bench ingest-cpu``). A tag whose
    device, kind, unit, area or position changes gets its prefix rebuilt. The cache is
    bounded: past ``max_series`` series it starts afresh.
    """

    def __init__(self, max_series: int = 200_000) -> None:
        self.max_series = max_series
        # (site, gateway) -> tag -> (device, kind, unit, area, position, "measurement,tags ")
        self._series: dict[tuple[str, str], dict[str, tuple[str, str, str, str, str, str]]] = {}

    def lines(self, batch: wire.TelemetryBatch) -> list[str]:
        """One line-protocol line per point of ``batch`` (pure; no I/O)."""
        site, gateway = batch.site, batch.gateway
        series = self._series.get((site, gateway))
        if series is None or len(series) > self.max_series:
            if len(self._series) > self.max_series:
                self._series.clear()
            series = self._series[(site, gateway)] = {}
        out: list[str] = []
        append = out.append
        after_value = _AFTER_VALUE
        quality_field = _QUALITY_FIELD
        isfinite = math.isfinite
        for p in batch.points:
            known = series.get(p.tag)
            if (
                known is None
                or known[0] != p.device
                or known[1] != p.kind
                or known[2] != p.unit
                or known[3] != p.area
                or known[4] != p.position
            ):
                known = (p.device, p.kind, p.unit, p.area, p.position, _prefix(site, gateway, p))
                series[p.tag] = known
            prefix = known[5]
            value = p.value
            if p.reason is None:
                if value is not None and isfinite(value):
                    append(f"{prefix}value={value!r}{after_value[p.quality]}{p.ts_ns}")
                else:
                    append(f"{prefix}{quality_field[p.quality]} {p.ts_ns}")
                continue
            fields = quality_field[p.quality] + ",reason=" + _string_field(p.reason)
            if value is not None and isfinite(value):
                fields = f"value={value!r},{fields}"
            append(f"{prefix}{fields} {p.ts_ns}")
        return out


_default_builder = LineBuilder()


def to_lines(batch: wire.TelemetryBatch) -> list[str]:
    """One line-protocol line per point of ``batch`` (pure; no I/O)."""
    return _default_builder.lines(batch)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """InfluxDB's answer to a write: how many lines it stored and how many it refused."""

    written: int
    refused: int = 0
    error: str = ""


@runtime_checkable
class PointWriter(Protocol):
    """What the ingest needs from a time-series writer."""

    @property
    def reachable(self) -> bool: ...

    def counters(self) -> dict[str, int]: ...

    async def write(self, lines: Sequence[str]) -> WriteResult:
        """Write now; :class:`InfluxUnavailable` when it cannot."""
        ...

    async def run(self) -> None:
        """Keep :attr:`reachable` current (pings while idle or down); forever."""
        ...

    async def ensure_database(self) -> None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


_IDLE_PING_S = 10.0


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ServerError(Exception):
    """A 5xx answer: worth retrying."""


class _BatchWriter:
    """Batching, counters and the health loop shared by both writers."""

    def __init__(self, *, batch_lines: int, max_requests: int = 3) -> None:
        if batch_lines < 1:
            raise ValueError("need batch_lines >= 1")
        self.batch_lines = batch_lines
        self._counters: collections.Counter[str] = collections.Counter()
        # Requests in flight from write(): InfluxDB answers fastest with a few, not many.
        self._requests = asyncio.Semaphore(max_requests)
        self._reachable = False
        self._last_contact = 0.0

    @property
    def reachable(self) -> bool:
        """True after the last contact with the server succeeded."""
        return self._reachable

    def counters(self) -> dict[str, int]:
        """written, rejected, unavailable (failed writes)."""
        return dict(self._counters)

    async def _send(self, lines: list[str]) -> None:
        raise NotImplementedError

    async def write(self, lines: Sequence[str]) -> WriteResult:
        """Write ``lines`` now, in requests of ``batch_lines`` sent side by side.

        Returns what InfluxDB stored and refused (from its real answer: a 1.x
        partial write names ``dropped=N``); raises :class:`InfluxUnavailable`
        when any request could not be answered (nothing is known then: the
        caller keeps every line; writing them again is harmless, since a point
        with the same series and timestamp overwrites itself).
        """
        if not lines:
            return WriteResult(0)
        chunks = [
            list(lines[i : i + self.batch_lines]) for i in range(0, len(lines), self.batch_lines)
        ]
        results = await asyncio.gather(
            *(self._write_chunk(chunk) for chunk in chunks), return_exceptions=True
        )
        written = refused = 0
        errors: list[str] = []
        for result in results:
            if isinstance(result, InfluxUnavailable):
                self._reachable = False
                self._counters["unavailable"] += 1
                raise result
            if isinstance(result, BaseException):
                raise result
            written += result.written
            refused += result.refused
            if result.error:
                errors.append(result.error)
        self._reachable = True
        self._last_contact = time.monotonic()
        self._counters["written"] += written
        self._counters["rejected"] += refused
        return WriteResult(written, refused, "; ".join(errors))

    async def _write_chunk(self, chunk: list[str]) -> WriteResult:
        try:
            async with self._requests:
                await self._send(chunk)
        except InfluxRejected as exc:
            log.error("influx refused %d of %d lines: %s", exc.rejected, len(chunk), exc)
            return WriteResult(len(chunk) - exc.rejected, exc.rejected, str(exc))
        return WriteResult(len(chunk))

    async def run(self) -> None:
        """Ping while the server is down (capped jittered backoff) or no write reached it
        for a while, so ``reachable`` stays honest when no telemetry flows; forever."""
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            delay = 1.0
            if not self._reachable or time.monotonic() - self._last_contact > _IDLE_PING_S:
                if await self.ping():
                    self._last_contact = time.monotonic()
                    backoff.reset()
                else:
                    delay = backoff.next_delay()
                    log.warning("influx unavailable; next ping in %.1fs", delay)
            await asyncio.sleep(delay)

    async def ping(self) -> bool:
        raise NotImplementedError

    async def ensure_database(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class InfluxV1Writer(_BatchWriter):
    """Batched gzip line-protocol writes to the v1 HTTP API (``/write?db=..&precision=ns``).

    Credentials are passed in by the caller (read from the environment, never YAML).
    Connection errors and 5xx are retried ``retry_attempts`` times with capped
    jittered backoff; 4xx answers are not retried.

    ``gzip_level``: compression of the request bodies (0: none). By default level 1
    to a remote server and none to one on this machine, where compressing only costs
    CPU on both sides (measured: ``safewatch bench ingest``, docs/benchmarks.md).
    """

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        batch_lines: int = 10_000,
        timeout_s: float = 10.0,
        gzip_level: int | None = None,
        retry_attempts: int = 3,
        retry_wait_max_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(batch_lines=batch_lines)
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        if gzip_level is None:
            gzip_level = 0 if is_loopback(self.url) else 1
        if not 0 <= gzip_level <= 9:
            raise ValueError("gzip_level must be in 0..9")
        self.gzip_level = gzip_level
        self.retry_attempts = retry_attempts
        self.retry_wait_max_s = retry_wait_max_s
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._client = httpx.AsyncClient(
            base_url=self.url, auth=auth, transport=transport, timeout=timeout_s
        )

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST with retries on connection errors and 5xx; translate to our errors."""
        try:
            async for attempt in stamina.retry_context(
                on=(httpx.TransportError, _ServerError),
                attempts=self.retry_attempts,
                timeout=None,
                wait_initial=0.05,
                wait_max=self.retry_wait_max_s,
            ):
                with attempt:
                    async with asyncio.timeout(self.timeout_s):
                        response = await self._client.post(path, **kwargs)
                    if response.status_code >= 500:
                        raise _ServerError(f"HTTP {response.status_code}: {_error_text(response)}")
                    return response
        except (httpx.TransportError, _ServerError, TimeoutError) as exc:
            raise InfluxUnavailable(f"InfluxDB at {self.url}: {exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip_level:
            # Level 1 at most by default: on a busy ingest CPU is scarcer than bandwidth.
            body = gzip.compress(body, compresslevel=self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        response = await self._post(
            "/write",
            params={"db": self.database, "precision": "ns"},
            content=body,
            headers=headers,
        )
        if response.status_code in (401, 403, 404):
            # Wrong credentials or a missing database: the data is fine, the caller keeps it.
            raise InfluxUnavailable(
                f"InfluxDB refused access (HTTP {response.status_code}): {_error_text(response)}"
            )
        if response.status_code >= 400:
            message = _error_text(response)
            raise InfluxRejected(message, _rejected_count(message, len(lines)))

    async def query(self, q: str) -> dict[str, Any]:
        """Run an InfluxQL statement via POST /query and return the decoded JSON."""
        response = await self._post("/query", params={"db": self.database, "q": q})
        if response.status_code >= 400:
            raise InfluxRejected(_error_text(response), 0)
        result: dict[str, Any] = response.json()
        return result

    async def ensure_database(self) -> None:
        """CREATE DATABASE (idempotent in InfluxDB 1.x)."""
        name = self.database.replace("\\", "\\\\").replace('"', '\\"')
        await self.query(f'CREATE DATABASE "{name}"')
        self._reachable = True

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.get("/ping")
        except (httpx.TransportError, TimeoutError):
            self._reachable = False
            return False
        self._reachable = response.status_code == 204
        return self._reachable

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text.strip()[:500]


_DROPPED = re.compile(r"dropped=(\d+)")


def _rejected_count(message: str, sent: int) -> int:
    """A 1.x partial write names how many points it dropped; otherwise all were."""
    match = _DROPPED.search(message)
    return min(int(match.group(1)), sent) if match else sent


class _V2WriteApi(Protocol):
    def write(self, bucket: str, org: str, record: list[str], write_precision: str) -> Any: ...


class InfluxV2Writer(_BatchWriter):
    """Batched writes through ``influxdb-client`` (token auth, org, bucket) for 2.x/3.x.

    The blocking client runs in a worker thread. ``write_api_factory`` is the
    seam for tests; by default it builds a synchronous ``influxdb_client`` write API.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str,
        org: str,
        bucket: str,
        batch_lines: int = 5000,
        timeout_s: float = 10.0,
        write_api_factory: Callable[[], _V2WriteApi] | None = None,
    ) -> None:
        super().__init__(batch_lines=batch_lines)
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.timeout_s = timeout_s
        self._client: Any = None
        if write_api_factory is None:
            from influxdb_client.client.influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            self._client = InfluxDBClient(
                url=self.url, token=token, org=org, timeout=int(timeout_s * 1000)
            )
            client = self._client

            def write_api_factory() -> _V2WriteApi:
                api: _V2WriteApi = client.write_api(write_options=SYNCHRONOUS)
                return api

        self._write_api = write_api_factory()

    async def _send(self, lines: list[str]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.to_thread(
                    self._write_api.write, self.bucket, self.org, list(lines), "ns"
                )
        except TimeoutError as exc:
            raise InfluxUnavailable(f"InfluxDB at {self.url}: write timed out") from exc
        except OSError as exc:
            raise InfluxUnavailable(f"InfluxDB at {self.url}: {exc}") from exc
        except Exception as exc:
            # influxdb_client raises ApiException (with .status) and urllib3 errors.
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 404):
                raise InfluxRejected(str(exc), len(lines)) from exc
            raise InfluxUnavailable(f"InfluxDB at {self.url}: {exc}") from exc

    async def ping(self) -> bool:
        if self._client is None:
            return self._reachable
        try:
            ok = bool(await asyncio.to_thread(self._client.ping))
        except Exception:
            ok = False
        self._reachable = ok
        return ok

    async def ensure_database(self) -> None:
        """Buckets are provisioned by the operator in 2.x; only check that the server answers."""
        if not await self.ping():
            raise InfluxUnavailable(f"InfluxDB at {self.url} does not answer /ping")

    async def aclose(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
