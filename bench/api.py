"""``safewatch bench api``: p99 latency of the hazard list and the heatmap at a fixed rate.

The API (uvicorn, one worker, the cloud's own ``create_app`` over a SQLite store filled
like ``bench heatmap``'s site plus a page of hazards) runs in a child process; this process
is the load: an open loop that sends each request at its scheduled time (500/s by
default), whatever the answers before it did, and measures from that scheduled time, so a
slow server cannot hide its queue (no coordinated omission). The load goes through
:class:`bench._http.LeanClient` (keep-alive, 32 connections, tens of microseconds per
request), so that the client does not eat the CPU the server is measured on. Phases of
``--seconds`` each: ``/health`` (the baseline: server and client overhead), then
``GET /api/v1/hazards?limit=50``, then ``GET /api/v1/risk/heatmap`` (the whole body every
time), then the same with ``If-None-Match`` (a wall polling: 304 while unchanged). A
request still unanswered ``--timeout-s`` after its time counts as a timeout at that
latency. The child runs the heatmap's refresher as ``safewatch cloud run`` does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import free_port, percentile, workdir
from bench._http import LeanClient

_TOKEN_ENV = "SAFEWATCH_BENCH_TOKEN"


def _prepare(work: Path, units: int, hazards_n: int) -> str:
    """Fill the store (risk picture and hazards); return a viewer API token."""
    from bench.heatmap import _fill, _model
    from cloud import migrations
    from cloud.audit import AuditLog
    from cloud.auth import Authenticator, AuthStore, Role
    from cloud.hazards import HazardGrade, HazardIn, HazardService
    from cloud.storage import Store

    store = Store(f"sqlite:///{work / 'cloud.db'}")
    try:
        migrations.upgrade(store.engine)
        audit = AuditLog(store.engine)
        hazards = HazardService(store.engine, audit, work / "evidence")
        model = _model(units, 10)
        _fill(store, hazards, model, 20)
        for i in range(hazards_n):
            hazards.create(
                HazardIn(
                    title=f"bench hazard {i}",
                    area=model.areas[i % len(model.areas)].id,
                    grade=HazardGrade.MAJOR if i % 5 == 0 else HazardGrade.GENERAL,
                    site="bench",
                ),
                "bench",
            )
        (work / "risk.yaml").write_text(model.model_dump_json(), encoding="utf-8")
        auth = Authenticator(AuthStore(store.engine), audit)
        token, _ = auth.create_token("bench", Role.VIEWER, "bench")
        return token
    finally:
        store.close()


def serve(work: Path, port: int) -> None:
    """The child: the cloud API over the prepared store, until killed."""
    import uvicorn

    from cloud.api import create_app
    from cloud.audit import AuditLog
    from cloud.auth import Authenticator, AuthStore
    from cloud.hazards import HazardService
    from cloud.risk import RiskModel, RiskService
    from cloud.service import run_event_loop
    from cloud.storage import Store

    store = Store(f"sqlite:///{work / 'cloud.db'}")
    audit = AuditLog(store.engine)
    hazards = HazardService(store.engine, audit, work / "evidence")
    model = RiskModel.model_validate_json((work / "risk.yaml").read_text(encoding="utf-8"))
    risk = RiskService(store.engine, model, store=store, hazards=hazards)
    app = create_app(
        store,
        lambda: {"db": True, "influx": True, "mqtt": True, "counters": {}},
        authenticator=Authenticator(AuthStore(store.engine), audit),
        audit=audit,
        hazards=hazards,
        risk=risk,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            refresher = tg.create_task(risk.keep_fresh(), name="risk-heatmap")
            await server.serve()
            refresher.cancel()

    run_event_loop(main())  # as safewatch cloud run does


async def _phase(
    client: LeanClient,
    path: str,
    rate: float,
    seconds: float,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    n = max(1, int(rate * seconds))
    latencies: list[float] = []
    errors = 0
    timeouts = 0
    statuses: dict[int, int] = {}

    async def one(at: float) -> None:
        nonlocal errors, timeouts
        # Never cancelled (a cancelled request costs a connection and a new handshake,
        # which only feeds the overload); one answered after timeout_s counts as a timeout.
        try:
            r = await client.get(path, headers)
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status not in (200, 304):
                errors += 1
            latency = (time.perf_counter() - at) * 1000
            timeouts += latency > timeout_s * 1000
            latencies.append(latency)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            latencies.append((time.perf_counter() - at) * 1000)

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    sent_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    done_s = time.perf_counter() - start
    return {
        "requests": n,
        "offered_rps": round(n / max(sent_s, 1e-9), 1),
        "rps": round(n / max(done_s, 1e-9), 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "errors": errors,
        "timeouts": timeouts,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    port: int, token: str, rate: float, seconds: float, timeout_s: float, server_pid: int
) -> dict[str, dict[str, Any]]:
    # A fixed pool: requests beyond it wait for a connection (and that wait counts).
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}  # as a browser
    client = LeanClient("127.0.0.1", port, headers=headers)
    try:
        deadline = time.monotonic() + 30
        while True:  # the server is up once /health answers
            try:
                if (await client.get("/health")).status == 200:
                    break
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench api: the API on port {port} did not start")
            await asyncio.sleep(0.1)
        for path in ("/api/v1/hazards?limit=50", "/api/v1/risk/heatmap"):  # warm
            warm = await client.get(path)
            if warm.status != 200:
                raise RuntimeError(f"bench api: {path} answered {warm.status}: {warm.body[:300]!r}")
        etag = (await client.get("/api/v1/risk/heatmap")).headers.get("etag", "")
        out = {}
        phases: list[tuple[str, str, dict[str, str] | None]] = [
            ("health", "/health", None),
            ("hazards", "/api/v1/hazards?limit=50", None),
            ("heatmap", "/api/v1/risk/heatmap", None),
            ("heatmap_etag", "/api/v1/risk/heatmap", {"If-None-Match": etag}),
        ]
        for name, path, extra in phases:
            server0, client0 = _cpu_s(server_pid), time.process_time()
            out[name] = await _phase(client, path, rate, seconds, timeout_s, extra)
            server1, client1 = _cpu_s(server_pid), time.process_time()
            n = out[name]["requests"]
            # CPU per request, less dependent on the box's load than the latencies
            out[name]["client_cpu_ms"] = round((client1 - client0) * 1000 / n, 3)
            if server0 is not None and server1 is not None:
                out[name]["server_cpu_ms"] = round((server1 - server0) * 1000 / n, 3)
            print(f"bench api: {name}: {out[name]}", flush=True)
        return out
    finally:
        await client.aclose()


def run(
    *,
    rate: float = 500.0,
    seconds: float = 5.0,
    units: int = 1000,
    hazards: int = 2000,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    with workdir() as work:
        token = _prepare(work, units, hazards)
        port = free_port()
        log = (work / "api.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.api", str(work), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            phases = asyncio.run(_load(port, token, rate, seconds, timeout_s, proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    worst = max(phases["hazards"]["p99_ms"], phases["heatmap"]["p99_ms"])
    return {
        "target_rps": rate,
        "seconds_per_phase": seconds,
        "units": units,
        "hazards": hazards,
        "baseline_health": phases["health"],
        "hazard_list": phases["hazards"],
        "heatmap": phases["heatmap"],
        "heatmap_if_none_match": phases["heatmap_etag"],
        "p99_ms": worst,
        "rps": min(phases["hazards"]["rps"], phases["heatmap"]["rps"]),
        "goal_p99_ms": 50,
        "goal_met": worst <= 50,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
