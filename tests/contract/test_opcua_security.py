"""OPC UA security: Basic256Sha256 Sign & Encrypt, certificates from our CLI, users.

The simulator trusts only the gateway certificate in its trust directory; an
untrusted certificate, a wrong password or an unsecured client is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from typer.testing import CliRunner

from device_drivers import DeviceUnavailable, Quality
from device_drivers.opcua import OpcUaDriver
from edge.config import LoadedSite, OpcUaBus, load_site
from edge.drivers import device_spec, make_driver
from safewatch.cli import app
from simulators import OpcUaSimulator, ServerSecurity
from tests.support import quiet_port

pytestmark = [pytest.mark.contract, pytest.mark.asyncio(loop_scope="module")]

SITE = """
site: {{id: opc-secure}}
gateway: {{id: gw-sec}}
buffer: {{path: {pki}/buffer.db}}
buses:
  - id: plc
    type: opcua
    endpoint: "opc.tcp://127.0.0.1:{port}/secure"
    security: sign_encrypt
    certificate: {pki}/{client}-cert.pem
    private_key: {pki}/{client}-key.pem
    server_certificate: {pki}/server-cert.pem
    username_env: SW_TEST_OPC_USER
    password_env: SW_TEST_OPC_PASSWORD
devices:
  - id: gas-1
    bus: plc
    tags:
      - {{name: CH4_S, profile: ch4, node: "ns=2;s=CH4_S", mode: read,
          location: {{area: a, position: face}}}}
"""


def _certs(pki: Path, name: str, *extra: str) -> None:
    result = CliRunner().invoke(app, ["certs", "opcua", "--out", str(pki), "--name", name, *extra])
    assert result.exit_code == 0, result.output
    assert (pki / f"{name}-cert.pem").is_file()
    assert (pki / f"{name}-key.pem").stat().st_mode & 0o077 == 0  # the key is private


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    _certs(folder, "server", "--server")
    _certs(folder, "gateway")
    _certs(folder, "rogue")  # a valid certificate nobody trusted
    trusted = folder / "trusted"
    trusted.mkdir()
    shutil.copy(folder / "gateway-cert.pem", trusted / "gateway-cert.pem")
    return folder


@pytest.fixture(scope="module")
def port() -> int:
    return quiet_port()


def _site(pki: Path, port: int, client: str, tmp: Path) -> LoadedSite:
    path = tmp / f"site-{client}.yaml"
    path.write_text(SITE.format(pki=pki, port=port, client=client))
    return load_site(path)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim(pki: Path, port: int) -> AsyncIterator[OpcUaSimulator]:
    site = _site(pki, port, "gateway", pki)
    security = ServerSecurity(
        certificate=str(pki / "server-cert.pem"),
        private_key=str(pki / "server-key.pem"),
        trusted=str(pki / "trusted"),
        users={"operator": "s3cret"},
    )
    simulator = OpcUaSimulator(site, security=security)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def _read(site: LoadedSite) -> Quality:
    drv = make_driver(site.bus("plc"))
    assert isinstance(drv, OpcUaDriver)
    try:
        (sample,) = await drv.read(drv.plan(device_spec(site, site.device("gas-1"))))
        return sample.quality
    finally:
        await drv.close()


async def test_trusted_certificate_and_password_read_encrypted(
    sim: OpcUaSimulator, pki: Path, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TEST_OPC_USER", "operator")
    monkeypatch.setenv("SW_TEST_OPC_PASSWORD", "s3cret")
    site = _site(pki, port, "gateway", tmp_path)
    bus = site.bus("plc")
    assert isinstance(bus, OpcUaBus) and bus.security == "sign_encrypt"
    assert await _read(site) is Quality.GOOD


async def test_untrusted_certificate_is_refused(
    sim: OpcUaSimulator, pki: Path, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TEST_OPC_USER", "operator")
    monkeypatch.setenv("SW_TEST_OPC_PASSWORD", "s3cret")
    with pytest.raises(DeviceUnavailable, match="BadCertificateUntrusted"):
        await _read(_site(pki, port, "rogue", tmp_path))


async def test_wrong_password_is_refused(
    sim: OpcUaSimulator, pki: Path, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TEST_OPC_USER", "operator")
    monkeypatch.setenv("SW_TEST_OPC_PASSWORD", "guess")
    with pytest.raises(DeviceUnavailable, match="BadUserAccessDenied"):
        await _read(_site(pki, port, "gateway", tmp_path))


async def test_unsecured_client_is_refused(
    sim: OpcUaSimulator, pki: Path, port: int, tmp_path: Path
) -> None:
    text = SITE.format(pki=pki, port=port, client="gateway")
    text = text.replace("security: sign_encrypt", "security: none")
    text = "\n".join(line for line in text.splitlines() if "_env:" not in line)
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    with pytest.raises(DeviceUnavailable, match="No matching endpoints"):
        await _read(load_site(path))
