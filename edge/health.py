"""Gateway health over HTTP: Prometheus ``/metrics`` and a JSON ``/status``.

The event loop owns every counter; it publishes an immutable snapshot once a
second (:meth:`HealthServer.publish`). The HTTP server runs in its own
thread (wsgiref, prometheus-client's WSGI app) and only ever reads the
latest snapshot, so a scrape never touches live state and a slow scraper
never blocks polling.

``/status`` is what ``safewatch edge status`` prints; ``/metrics`` exposes the
same facts per bus and device:

=============================================  =========================================
``safewatch_device_reads_total``               reads by ``result`` (ok, timeout, crc...)
``safewatch_device_latency_seconds``           average latency of good reads
``safewatch_device_last_good_timestamp_seconds``  wall clock of the last good read
``safewatch_device_breaker_open``              1 while the device is in the dead lane
``safewatch_device_skipped_polls_total``       periods that passed without a poll
``safewatch_device_cannot_meet_period``        1 when polled > 10 % slower than configured
``safewatch_bus_lag_seconds``                  how late the bus's last due poll started
``safewatch_gateway_<counter>``                the gateway's counters (samples, uplink...)
=============================================  =========================================
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HealthServer", "Snapshot"]

log = logging.getLogger("safewatch.edge.health")

Snapshot = Mapping[str, Any]
"""``{"gateway": str, "ts_ns": int, "counters": {...}, "buses": [...], "devices": [...]}``"""


class _SnapshotCollector(Collector):
    def __init__(self, server: HealthServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        snap = self._server.snapshot
        if snap is None:
            return
        yield from _metrics(snap)


def _metrics(snap: Snapshot) -> Iterable[Metric]:
    reads = CounterMetricFamily(
        "safewatch_device_reads", "Device reads by result", labels=["bus", "device", "result"]
    )
    latency = GaugeMetricFamily(
        "safewatch_device_latency_seconds", "Average good-read latency", labels=["bus", "device"]
    )
    last_good = GaugeMetricFamily(
        "safewatch_device_last_good_timestamp_seconds",
        "Wall clock of the last good read",
        labels=["bus", "device"],
    )
    breaker = GaugeMetricFamily(
        "safewatch_device_breaker_open", "1 while the device is retried outside the schedule",
        labels=["bus", "device"],
    )  # fmt: skip
    skipped = CounterMetricFamily(
        "safewatch_device_skipped_polls", "Poll periods skipped", labels=["bus", "device"]
    )
    late = GaugeMetricFamily(
        "safewatch_device_cannot_meet_period",
        "1 when the device is polled more than 10 % slower than configured",
        labels=["bus", "device"],
    )
    for dev in snap.get("devices", ()):
        labels = [str(dev["bus"]), str(dev["device"])]
        reads.add_metric([*labels, "ok"], dev["ok"])
        for reason, count in dev["errors"].items():
            reads.add_metric([*labels, reason], count)
        if dev["latency_avg_ms"] is not None:
            latency.add_metric(labels, dev["latency_avg_ms"] / 1000)
        if dev["last_good_ns"] is not None:
            last_good.add_metric(labels, dev["last_good_ns"] / 1e9)
        breaker.add_metric(labels, 0.0 if dev["breaker"] == "closed" else 1.0)
        skipped.add_metric(labels, dev["skipped"])
        late.add_metric(labels, 1.0 if dev["cannot_meet_period"] else 0.0)
    yield from (reads, latency, last_good, breaker, skipped, late)
    lag = GaugeMetricFamily(
        "safewatch_bus_lag_seconds", "How late the last due poll started", labels=["bus"]
    )
    for bus in snap.get("buses", ()):
        lag.add_metric([str(bus["bus"])], (bus["lag_ms"] or 0.0) / 1000)
    yield lag
    for name, value in snap.get("counters", {}).items():
        family = GaugeMetricFamily(f"safewatch_gateway_{name}", f"Gateway counter {name}")
        family.add_metric([], float(value))
        yield family


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health http: " + format, *args)


class HealthServer:
    """Serve the latest snapshot on ``host:port`` (``port`` 0 picks a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.snapshot: Snapshot | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_SnapshotCollector(self))
        self._metrics_app = make_wsgi_app(self._registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot  # one reference swap: readers see old or new, never half

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path in ("/status", "/"):
            data = json.dumps(self.snapshot or {}, sort_keys=True).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [data]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /status\n"]

    def start(self) -> None:
        server = make_server(self.host, self.port, self._app, handler_class=_QuietHandler)
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="health-http",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("health: http://%s:%d/metrics and /status", self.host, self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
