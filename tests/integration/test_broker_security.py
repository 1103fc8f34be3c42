"""A TLS Mosquitto configured by ``safewatch broker``: who may connect, publish and read.

The broker's certificates are made here with ``cryptography``; its listener, password
file and ACL come from ``safewatch broker init`` / ``add-gateway``, as an operator
would make them. The real cloud ingest (read-only account, TLS) and the real gateway
publisher (its own account, TLS, client certificate) run against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx
import pytest
from typer.testing import CliRunner

import wire
from cloud import CloudService, CloudSettings
from cloud.auth import Role
from cloud.broker import COMMANDER, INGEST
from cloud.commands import CommandSigner, generate_command_key, send_command
from edge.remote_commands import CommandListener, CommandVerifier, load_public_keys
from edge.uplink.buffer import StoreAndForwardBuffer
from edge.uplink.publisher import MqttPublisher
from safewatch.cli import app as cli
from tests.db_support import cloud_db_url
from tests.factories import alarm, gateway_status, point, telemetry
from tests.support import async_wait_until, free_port, port_open, wait_until
from tests.tls_support import Pki, make_pki

pytestmark = pytest.mark.integration

SITE = "mine-a"
GW_A, GW_B = "gw-a", "gw-b"


@dataclass
class SecureBroker:
    port: int
    pki: Pki
    passwords: dict[str, str]
    process: subprocess.Popen[bytes]

    def tls(self, *, client_cert: bool = False, ca: Path | None = None) -> ssl.SSLContext:
        return wire.client_tls_context(
            str(ca or self.pki.ca),
            str(self.pki.client_cert) if client_cert else None,
            str(self.pki.client_key) if client_cert else None,
        )

    def client(
        self, account: str | None, *, identifier: str | None = None, password: str | None = None
    ) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=identifier,
            username=account,
            password=password if password is not None else self.passwords.get(account or ""),
            tls_context=self.tls(),
            timeout=5,
        )


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    broker_dir = tmp_path / "broker"
    runner = CliRunner()
    init = runner.invoke(
        cli,
        [
            "broker", "init", "--dir", str(broker_dir), "--bind", "127.0.0.1",
            "--port", str(port), "--cert", str(pki.server_cert), "--key", str(pki.server_key),
            "--client-ca", str(pki.ca),
        ],
    )  # fmt: skip
    assert init.exit_code == 0, init.output
    passwords = {
        name: (broker_dir / f"{name}.password").read_text().strip() for name in (INGEST, COMMANDER)
    }
    for gateway in (GW_A, GW_B):
        out = tmp_path / f"{gateway}.password"
        added = runner.invoke(
            cli,
            ["broker", "add-gateway", SITE, gateway, "--dir", str(broker_dir),
             "--password-out", str(out)],
        )  # fmt: skip
        assert added.exit_code == 0, added.output
        passwords[wire.gateway_account(SITE, gateway)] = out.read_text().strip()
    # The shipped listener file, plus what a test broker needs to run as this user.
    conf = tmp_path / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        (broker_dir / "safewatch.conf").read_text() + f"{user}persistence false\n",
        encoding="utf-8",
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 10, "the TLS mosquitto")
        yield SecureBroker(port, pki, passwords, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _refused(client: aiomqtt.Client) -> str:
    try:
        async with client:
            pass
    except aiomqtt.MqttError as exc:
        return str(exc)
    raise AssertionError("the broker accepted the connection")


async def test_anonymous_wrong_password_plaintext_and_untrusted_broker_are_refused(
    secure_broker: SecureBroker,
) -> None:
    b = secure_broker
    assert await _refused(b.client(None))  # anonymous
    assert await _refused(b.client(wire.gateway_account(SITE, GW_A), password="guess-guess"))
    plain = aiomqtt.Client(
        "127.0.0.1", b.port, username=INGEST, password=b.passwords[INGEST], timeout=2
    )
    assert await _refused(plain)  # no TLS on a TLS listener
    impostor_check = aiomqtt.Client(
        "127.0.0.1",
        b.port,
        username=INGEST,
        password=b.passwords[INGEST],
        tls_context=b.tls(ca=b.pki.other_ca),
        timeout=5,
    )
    assert await _refused(impostor_check)  # the client checks the broker's certificate
    async with b.client(INGEST):  # the right account over TLS is let in
        pass
    gateway_with_cert = aiomqtt.Client(
        "127.0.0.1",
        b.port,
        username=wire.gateway_account(SITE, GW_A),
        password=b.passwords[wire.gateway_account(SITE, GW_A)],
        tls_context=b.tls(client_cert=True),
        timeout=5,
    )
    async with gateway_with_cert:  # optional client certificates are accepted
        pass


@contextlib.asynccontextmanager
async def _cloud(
    b: SecureBroker, tmp_path: Path, influx_db: tuple[str, str]
) -> AsyncIterator[CloudService]:
    settings = CloudSettings(
        mqtt_host="127.0.0.1",
        mqtt_port=b.port,
        mqtt_username=INGEST,
        mqtt_password=b.passwords[INGEST],
        mqtt_ca_file=str(b.pki.ca),
        influx_url=influx_db[0],
        influx_db=influx_db[1],
        db_url=cloud_db_url(tmp_path, "cloud.db"),
        port=0,
    )
    service = CloudService(settings)
    assert service.ingest.client_id.startswith("safewatch-ingest-")
    assert len(service.ingest.client_id.rsplit("-", 1)[1]) == 20, "secret-derived suffix"
    run = asyncio.create_task(service.run(), name="cloud")
    try:
        await async_wait_until(lambda: service.ingest.connected, 20, "the ingest over TLS")
        yield service
    finally:
        service.request_stop()
        async with asyncio.timeout(20):
            await run


async def test_gateways_are_confined_and_the_ingest_refuses_forgeries(
    secure_broker: SecureBroker, tmp_path: Path, influx_db: tuple[str, str]
) -> None:
    b = secure_broker
    now = time.time_ns()
    account_a = wire.gateway_account(SITE, GW_A)
    async with _cloud(b, tmp_path, influx_db) as service, b.client(account_a) as gw_a:
        store = service.store
        # 1. gateway A publishes as gateway B on B's topics: the ACL drops it all
        as_b = telemetry(1, point("FAKE-B", 4.9, now), gateway=GW_B, sent_ns=now)
        await gw_a.publish(wire.topic_of(as_b), wire.encode(as_b), qos=1)
        fake_cut = alarm(2, gateway=GW_B, ts_ns=now)
        await gw_a.publish(wire.topic_of(fake_cut), wire.encode(fake_cut), qos=1)
        offline_b = gateway_status("offline", ts_ns=now, gateway=GW_B)
        await gw_a.publish(wire.topic_of(offline_b), wire.encode(offline_b), qos=1, retain=True)
        await gw_a.publish(wire.command_topic(SITE, GW_B), b'{"cmd":"ack"}', qos=1)
        # 2. on its own topic, a payload that claims to be gateway B: forged
        forged = telemetry(3, point("FAKE-B2", 4.9, now), gateway=GW_B, sent_ns=now)
        await gw_a.publish(wire.topic_for(SITE, GW_A, "telemetry"), wire.encode(forged), qos=1)
        # 3. stamped a day ahead: outside the accepted window
        ahead = now + 86_400 * 10**9
        future = telemetry(4, point("CH4-A", 0.3, ahead), gateway=GW_A, sent_ns=ahead)
        await gw_a.publish(wire.topic_of(future), wire.encode(future), qos=1)
        # 4. then A's real data, through the real publisher (TLS, own account, client cert)
        buffer = StoreAndForwardBuffer(tmp_path / "a.db", 10 * 1024 * 1024, site=SITE, gateway=GW_A)
        buffer.append_telemetry([point("CH4-A", 0.4, time.time_ns())])
        password_a = b.passwords[account_a]
        publisher = MqttPublisher(
            buffer,
            site=SITE,
            gateway=GW_A,
            host="127.0.0.1",
            port=b.port,
            username=account_a,
            password=password_a,
            tls_context=b.tls(client_cert=True),
            client_id=wire.secret_client_id(f"safewatch-{SITE}-{GW_A}", password_a),
            idle_poll_s=0.1,
        )
        pub_task = asyncio.create_task(publisher.run(), name="publisher-a")
        try:

            def a_stored() -> bool:
                return any(v.tag == "CH4-A" for v in store.latest(SITE))

            await async_wait_until(a_stored, 20, "gateway A's real telemetry in the store")

            def both_dead() -> bool:
                reasons = {d.reason for d in store.dead_letters()}
                return {"topic_mismatch", "ts_out_of_window"} <= reasons

            await async_wait_until(both_dead, 10, "the forged and future messages refused")
        finally:
            await publisher.stop(drain_s=2)
            pub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pub_task
            buffer.close()

        latest = store.latest(SITE)
        assert {v.tag for v in latest} == {"CH4-A"}, "nothing of B's or forged was stored"
        assert all(v.gateway == GW_A and v.value == 0.4 for v in latest)
        assert store.alarms() == [], "the fake cut alarm never reached the ingest"
        assert GW_B not in {g.gateway for g in store.gateways()}
        counters = service.ingest.counters()
        assert counters.get("dead_topic_mismatch") == 1
        assert counters.get("dead_ts_out_of_window") == 1


async def test_gateways_read_only_their_commands_and_the_ingest_writes_nothing(
    secure_broker: SecureBroker,
) -> None:
    b = secure_broker
    account_a, account_b = (wire.gateway_account(SITE, g) for g in (GW_A, GW_B))
    seen_by_a: list[str] = []
    seen_by_ingest: list[str] = []

    async def collect(client: aiomqtt.Client, into: list[str]) -> None:
        async for message in client.messages:
            into.append(str(message.topic))

    async with (
        b.client(account_a) as gw_a,
        b.client(account_b) as gw_b,
        b.client(INGEST) as ingest,
        b.client(COMMANDER) as commander,
    ):
        await gw_a.subscribe("safewatch/v1/#", qos=1)  # granted, but filtered by the ACL
        await ingest.subscribe("safewatch/v1/#", qos=1)
        tasks = [
            asyncio.create_task(collect(gw_a, seen_by_a), name="a"),
            asyncio.create_task(collect(ingest, seen_by_ingest), name="ingest"),
        ]
        try:
            now = time.time_ns()
            b_batch = telemetry(1, point("CH4-B", 0.2, now), gateway=GW_B, sent_ns=now)
            await gw_b.publish(wire.topic_of(b_batch), wire.encode(b_batch), qos=1)
            fake = gateway_status("offline", ts_ns=now, gateway=GW_A)
            await ingest.publish(wire.topic_of(fake), wire.encode(fake), qos=1)  # read-only
            await gw_b.publish(wire.command_topic(SITE, GW_A), b"from-b", qos=1)  # not B's to send
            await commander.publish(wire.command_topic(SITE, GW_B), b"for-b", qos=1)
            await commander.publish(wire.command_topic(SITE, GW_A), b"for-a", qos=1)
            a_topic = wire.topic_for(SITE, GW_A, "telemetry")
            await gw_a.publish(a_topic, b"marker", qos=1)

            await async_wait_until(
                lambda: a_topic in seen_by_ingest, 10, "A's marker at the ingest"
            )
            await async_wait_until(
                lambda: wire.command_topic(SITE, GW_A) in seen_by_a, 10, "A's command"
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert seen_by_a == [wire.command_topic(SITE, GW_A)], "A reads only its own command topic"
    assert wire.topic_of(b_batch) in seen_by_ingest
    assert wire.topic_of(fake) not in seen_by_ingest, "the ingest account cannot publish"
    assert wire.command_topic(SITE, GW_B) not in seen_by_ingest, "the ingest reads no commands"


def test_an_unreadable_tls_file_is_named_before_the_cloud_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["cloud", "run", "--mqtt-ca-file", str(tmp_path / "missing-ca.pem"),
         "--db-url", cloud_db_url(tmp_path, "c.db")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "missing-ca.pem" in result.output


async def test_gateway_takes_only_signed_commands_from_the_commander(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    b = secure_broker
    generate_command_key(tmp_path / "cmd.key", tmp_path / "cmd.pub")
    generate_command_key(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    signer, rogue = CommandSigner(tmp_path / "cmd.key"), CommandSigner(tmp_path / "rogue.key")
    account_a = wire.gateway_account(SITE, GW_A)
    listener = CommandListener(
        CommandVerifier(SITE, GW_A, load_public_keys([str(tmp_path / "cmd.pub")])),
        host="127.0.0.1",
        port=b.port,
        client_id=wire.secret_client_id("safewatch-mine-a-gw-a-cmd", b.passwords[account_a]),
        username=account_a,
        password=b.passwords[account_a],
        tls_context=b.tls(),
    )
    task = asyncio.create_task(listener.run(), name="commands-a")
    try:
        async with asyncio.timeout(10):
            await listener.subscribed.wait()
        async with (
            b.client(COMMANDER) as commander,
            b.client(wire.gateway_account(SITE, GW_B)) as gw_b,
        ):
            topic = wire.command_topic(SITE, GW_A)
            forged = rogue.sign(rogue.command(SITE, GW_A, "ping", "intruder"))
            await commander.publish(topic, forged, qos=1)  # right account, wrong key
            await gw_b.publish(topic, signer.sign(signer.command(SITE, GW_A, "ping", "b")), qos=1)
        await send_command(
            signer,
            signer.command(SITE, GW_A, "ping", "ops"),
            host="127.0.0.1",
            port=b.port,
            username=COMMANDER,
            password=b.passwords[COMMANDER],
            tls_context=b.tls(),
        )
        await async_wait_until(lambda: listener.counts["accepted"] >= 1, 10, "the signed ping")
        await async_wait_until(
            lambda: listener.counts["refused_unknown_key"] >= 1, 10, "the forged command refused"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # B's command never reached A (ACL), the forged one was refused, the signed one taken
    assert dict(listener.counts) == {"accepted": 1, "refused_unknown_key": 1}


async def test_api_command_reaches_the_gateway_signed_and_audited(
    secure_broker: SecureBroker, tmp_path: Path, influx_db: tuple[str, str]
) -> None:
    b = secure_broker
    generate_command_key(tmp_path / "cmd.key", tmp_path / "cmd.pub")
    account_a = wire.gateway_account(SITE, GW_A)
    listener = CommandListener(
        CommandVerifier(SITE, GW_A, load_public_keys([str(tmp_path / "cmd.pub")])),
        host="127.0.0.1",
        port=b.port,
        client_id="gw-a-commands",
        username=account_a,
        password=b.passwords[account_a],
        tls_context=b.tls(),
    )
    listening = asyncio.create_task(listener.run(), name="commands-a")
    settings = CloudSettings(
        mqtt_host="127.0.0.1",
        mqtt_port=b.port,
        mqtt_username=INGEST,
        mqtt_password=b.passwords[INGEST],
        mqtt_ca_file=str(b.pki.ca),
        command_key_file=str(tmp_path / "cmd.key"),
        commander_password=b.passwords[COMMANDER],
        influx_url=influx_db[0],
        influx_db=influx_db[1],
        db_url=cloud_db_url(tmp_path, "cloud.db"),
        port=0,
    )
    service = CloudService(settings)
    running = asyncio.create_task(service.run(), name="cloud")
    try:
        async with asyncio.timeout(10):
            await listener.subscribed.wait()
        await async_wait_until(lambda: service.health()["db"], 15, "the cloud's schema")
        engineer = await asyncio.to_thread(
            service.auth.add_user, "eng", "long enough password", Role.SAFETY_ENGINEER, "test"
        )
        viewer = await asyncio.to_thread(
            service.auth.add_user, "view", "long enough password", Role.VIEWER, "test"
        )
        url = f"/api/v1/gateways/{SITE}/{GW_A}/commands"
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app), base_url="http://api"
        ) as api:
            as_viewer = await api.post(
                url,
                json={"action": "ping"},
                headers={"Authorization": f"Bearer {service.auth.issue(viewer).access_token}"},
            )
            assert as_viewer.status_code == 403
            sent = await api.post(
                url,
                json={"action": "ping", "ttl_s": 30},
                headers={"Authorization": f"Bearer {service.auth.issue(engineer).access_token}"},
            )
        assert sent.status_code == 202, sent.text
        await async_wait_until(lambda: listener.counts["accepted"] == 1, 10, "the API's ping")
        (row,) = service.audit.entries(action="command_sent")
        assert (row.actor, row.target) == ("eng", f"{SITE}/{GW_A}")
        assert row.details_dict()["command"] == sent.json()["id"]
    finally:
        service.request_stop()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        async with asyncio.timeout(20):
            await running
