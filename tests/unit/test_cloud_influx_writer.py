"""Influx writers against fakes at the HTTP / client seam: batching, gzip, errors, answers."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cloud.storage import (
    InfluxUnavailable,
    InfluxV1Writer,
    InfluxV2Writer,
    PointWriter,
)

LINES = [
    f'ch4,tag=T{i} value={i}.0,quality="good" {1_700_000_000_000_000_000 + i}' for i in range(5)
]


class FakeInflux:
    """Answers /write with scripted status codes and records what it got."""

    def __init__(self, *statuses: tuple[int, dict[str, str] | None], gzipped: bool = True) -> None:
        self.statuses = list(statuses)
        self.gzipped = gzipped
        self.requests: list[httpx.Request] = []
        self.bodies: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/write":
            sent = request.content
            if self.gzipped:
                assert request.headers["content-encoding"] == "gzip"
                sent = gzip.decompress(sent)
            else:
                assert "content-encoding" not in request.headers
            self.bodies.append(sent.decode().splitlines())
        status, body = self.statuses.pop(0) if self.statuses else (204, None)
        return httpx.Response(status, json=body) if body else httpx.Response(status)


def writer(
    fake: Callable[[httpx.Request], httpx.Response],
    url: str = "http://influx.test:8086",
    **kw: Any,
) -> InfluxV1Writer:
    options: dict[str, Any] = {
        "batch_lines": 2,
        "retry_attempts": 2,
        "retry_wait_max_s": 0.01,
    }
    options.update(kw)
    return InfluxV1Writer(url, "plant", transport=httpx.MockTransport(fake), **options)


async def test_write_sends_gzip_batches_with_db_and_ns_precision() -> None:
    fake = FakeInflux()
    w = writer(fake, username="reader", password="s3cret")
    result = await w.write(LINES)
    assert sorted(fake.bodies) == sorted([LINES[0:2], LINES[2:4], LINES[4:5]])
    first = fake.requests[0]
    assert first.method == "POST"
    assert dict(first.url.params) == {"db": "plant", "precision": "ns"}
    assert first.headers["authorization"].startswith("Basic ")
    assert (result.written, result.refused) == (5, 0)
    assert w.counters()["written"] == 5
    assert w.reachable


@pytest.mark.parametrize(
    ("url", "level", "gzipped"),
    [
        ("http://127.0.0.1:8086", None, False),
        ("http://localhost:8086", None, False),
        ("http://[::1]:8086", None, False),
        ("http://influx.test:8086", None, True),
        ("http://10.0.0.5:8086", None, True),
        ("http://127.0.0.1:8086", 1, True),
        ("http://influx.test:8086", 0, False),
    ],
)
async def test_bodies_are_gzipped_except_to_this_machine_unless_told(
    url: str, level: int | None, gzipped: bool
) -> None:
    fake = FakeInflux(gzipped=gzipped)
    w = writer(fake, url, gzip_level=level, batch_lines=10)
    assert (await w.write(LINES)).written == 5
    assert fake.bodies == [LINES]


def test_gzip_level_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="gzip_level"):
        writer(FakeInflux(), gzip_level=10)


async def test_5xx_is_retried_then_delivered() -> None:
    fake = FakeInflux((503, {"error": "busy"}))
    w = writer(fake, batch_lines=5)
    assert (await w.write(LINES)).written == 5
    assert fake.bodies == [LINES, LINES]
    assert w.counters()["written"] == 5


async def test_unreachable_raises_and_counts_nothing_written() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    w = writer(refuse)
    with pytest.raises(InfluxUnavailable, match="connection refused"):
        await w.write(LINES)
    assert w.counters()["unavailable"] == 1
    assert "written" not in w.counters()
    assert not w.reachable


async def test_missing_database_is_unavailable_not_rejected() -> None:
    fake = FakeInflux((404, {"error": 'database not found: "plant"'}))
    w = writer(fake)
    with pytest.raises(InfluxUnavailable, match="database not found"):
        await w.write(LINES[:2])
    assert "written" not in w.counters()
    assert len(fake.requests) == 1  # 4xx never retried


async def test_4xx_is_counted_as_rejected_with_partial_write_count_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conflict = 'partial write: field type conflict: input field "value" is type string dropped=1'
    fake = FakeInflux((400, {"error": conflict}), (400, {"error": "unable to parse"}))
    w = writer(fake)
    result = await w.write(LINES)  # a rejected request does not stop the others
    assert len(fake.requests) == 3
    assert (result.written, result.refused) == (1 + 1, 1 + 2)
    assert w.counters()["rejected"] == 1 + 2
    assert w.counters()["written"] == 1 + 1
    assert "field type conflict" in caplog.text
    assert "unable to parse" in caplog.text


async def test_ensure_database_creates_it_via_query_and_ping() -> None:
    seen: list[httpx.Request] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/ping":
            return httpx.Response(204)
        return httpx.Response(200, json={"results": [{"statement_id": 0}]})

    w = writer(app)
    await w.ensure_database()
    assert seen[0].url.path == "/query"
    assert seen[0].url.params["q"] == 'CREATE DATABASE "plant"'
    assert await w.ping() is True


class FakeWriteApi:
    def __init__(self, fail_status: int | None = None) -> None:
        self.calls: list[tuple[str, str, list[str], str]] = []
        self.fail_status = fail_status

    def write(self, bucket: str, org: str, record: list[str], write_precision: str) -> None:
        if self.fail_status is not None:
            exc = RuntimeError(f"HTTP {self.fail_status}")
            exc.status = self.fail_status  # type: ignore[attr-defined]
            raise exc
        self.calls.append((bucket, org, record, write_precision))


async def test_v2_writer_hands_batches_to_the_client() -> None:
    api = FakeWriteApi()
    w = InfluxV2Writer(
        "http://influx2.test:8086",
        token="t0k",
        org="mines",
        bucket="telemetry",
        batch_lines=3,
        write_api_factory=lambda: api,
    )
    assert isinstance(w, PointWriter)
    assert (await w.write(LINES)).written == 5
    assert api.calls == [
        ("telemetry", "mines", LINES[:3], "ns"),
        ("telemetry", "mines", LINES[3:], "ns"),
    ]
    assert w.counters()["written"] == 5


async def test_v2_writer_translates_client_errors() -> None:
    rejected = InfluxV2Writer(
        "http://x",
        token="t",
        org="o",
        bucket="b",
        write_api_factory=lambda: FakeWriteApi(fail_status=400),
    )
    assert (await rejected.write(LINES[:2])).refused == 2
    assert rejected.counters()["rejected"] == 2

    down = InfluxV2Writer(
        "http://x",
        token="t",
        org="o",
        bucket="b",
        write_api_factory=lambda: FakeWriteApi(fail_status=503),
    )
    with pytest.raises(InfluxUnavailable):
        await down.write(LINES[:2])
    assert "written" not in down.counters()


def test_v1_writer_is_a_point_writer() -> None:
    assert isinstance(writer(FakeInflux()), PointWriter)
