"""``safewatch demo --site X`` runs every example site end to end.

For each site file in ``firmware_configs/sites/`` the real demo command runs
(``sim run`` with the site's own scenario, ``cloud run``, ``edge run``: real
processes over Modbus TCP, RTU lines on ptys, OPC UA and serial detectors) and
the test waits until a reading of every tag of the site is served by the cloud
API. The site runs as a copy whose endpoints are moved to free ports and a
temporary directory (two suites share this machine) and whose ``mqtt`` section
names a private broker on a free port: the demo must follow the site's broker,
or nothing reaches the API. RTU sites keep their serial settings (the heading
face's line is 8E1, Modbus's default).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx
import pytest
from ruamel.yaml import YAML

from edge.config import load_site
from tests.support import Broker, free_port, quiet_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SITES_DIR = REPO / "firmware_configs" / "sites"
SITES = sorted(p for p in SITES_DIR.glob("*.yaml") if not p.name.endswith(".risk.yaml"))
READINGS_WITHIN_S = 150.0  # three children start (imports, OPC UA address space) on a loaded VM


def _relocated(site_file: Path, tmp: Path, broker: Broker) -> Path:
    """A copy of the site with its endpoints on free ports and paths under ``tmp``."""
    yaml = YAML(typ="rt")
    doc = yaml.load(site_file.read_text(encoding="utf-8"))
    for bus in doc["buses"]:
        if bus["type"] in ("modbus_tcp", "modbus_rtu_over_tcp"):
            bus["port"] = quiet_port()
        elif bus["type"] == "opcua":
            url = urlparse(bus["endpoint"])
            bus["endpoint"] = urlunparse(url._replace(netloc=f"{url.hostname}:{quiet_port()}"))
        else:  # serial line or RTU line: the simulator links its pty here
            bus["port"] = str(tmp / "tty" / Path(bus["port"]).name)
    doc["mqtt"] = {"host": broker.host, "port": broker.port}
    doc.setdefault("buffer", {})["path"] = str(tmp / "site-buffer.db")
    copy = tmp / site_file.name  # same stem: the demo picks the site's own scenario
    with copy.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    risk = site_file.with_name(f"{site_file.stem}.risk.yaml")
    if risk.is_file():
        shutil.copy(risk, tmp / risk.name)
    return copy


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


@pytest.mark.parametrize("site_file", SITES, ids=lambda p: p.stem)
def test_the_demo_runs_the_site_and_its_readings_reach_the_api(
    site_file: Path, tmp_path: Path, broker: Broker
) -> None:
    copy = _relocated(site_file, tmp_path, broker)
    site = load_site(copy)
    tags = {tag.name for _, tag in site.tags()}
    site_id = site.config.site.id
    api_port = free_port()
    out_path = tmp_path / "demo.out"
    argv = [sys.executable, "-m", "safewatch.cli", "demo", "--site", str(copy)]
    argv += ["--api-port", str(api_port), "--speed", "2"]
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            argv,
            cwd=tmp_path,  # var/demo (state, logs, models) goes here
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )
    children: list[int] = []
    try:

        def token() -> str | None:
            assert demo.poll() is None, f"demo exited:\n{out_path.read_text()[-3000:]}"
            found = re.search(r"API token:\s+(swt\.\S+)", out_path.read_text())
            return found.group(1) if found else None

        bearer = wait_until(token, READINGS_WITHIN_S, "the demo to start and print its token")
        children = _children_of(demo.pid)
        assert len(children) == 3, "sim, cloud and edge run as the demo's children"
        scenario = site_file.stem if site_file.stem != "demo-mine" else "methane-buildup"
        assert f"scenarios/{scenario}.yaml" in out_path.read_text(), "the site's own scenario"
        seen: set[str] = set()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=5,
        ) as api:

            def every_tag_served() -> bool:
                assert demo.poll() is None, f"demo exited:\n{out_path.read_text()[-3000:]}"
                response = api.get("/api/v1/latest", params={"site": site_id})
                if response.status_code == 404:  # no telemetry from the site yet
                    return False
                response.raise_for_status()
                body = response.json()
                items = body if isinstance(body, list) else next(iter(body.values()), [])
                seen.update(item["tag"] for item in items if item.get("value") is not None)
                return tags <= seen

            try:
                wait_until(every_tag_served, READINGS_WITHIN_S, "a reading of every tag", 0.5)
            except AssertionError:
                logs = "\n".join(
                    f"--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}"
                    for p in sorted((tmp_path / "var" / "demo").glob("*.log"))
                )
                raise AssertionError(f"tags never served: {sorted(tags - seen)}\n{logs}") from None
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0, out_path.read_text()[-3000:]
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert not alive, f"children left running: {alive}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in children:  # only if the demo could not stop them
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
