"""Signed commands from the cloud: what the gateway accepts and everything it refuses."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

import wire
from cloud.commands import CommandSigner, generate_command_key
from edge.remote_commands import CommandListener, CommandRefused, CommandVerifier, load_public_keys

SITE, GATEWAY = "mine-a", "gw-a"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[CommandSigner, CommandSigner, Path]:
    generate_command_key(tmp_path / "cloud.key", tmp_path / "cloud.pub")
    generate_command_key(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    return CommandSigner(tmp_path / "cloud.key"), CommandSigner(tmp_path / "rogue.key"), tmp_path


@pytest.fixture
def verifier(keys: tuple[CommandSigner, CommandSigner, Path]) -> CommandVerifier:
    return CommandVerifier(SITE, GATEWAY, load_public_keys([str(keys[2] / "cloud.pub")]))


def _reason(verifier: CommandVerifier, payload: bytes) -> str:
    with pytest.raises(CommandRefused) as info:
        verifier.verify(payload)
    return info.value.reason


def test_a_signed_command_for_this_gateway_is_accepted_once(
    keys: tuple[CommandSigner, CommandSigner, Path], verifier: CommandVerifier
) -> None:
    signer = keys[0]
    command = signer.command(SITE, GATEWAY, "acknowledge", "ops", {"alarm": "CH4-1:alarm"})
    payload = signer.sign(command)
    assert verifier.verify(payload) == command
    assert _reason(verifier, payload) == "replayed"


def test_forgeries_are_refused(
    keys: tuple[CommandSigner, CommandSigner, Path], verifier: CommandVerifier
) -> None:
    signer, rogue, _ = keys
    good = signer.command(SITE, GATEWAY, "shelve", "ops")
    assert _reason(verifier, rogue.sign(good)) == "unknown_key"
    envelope = json.loads(signer.sign(good))
    # the rogue signs with its key but claims the cloud's key id
    forged = dict(envelope, sig=json.loads(rogue.sign(good))["sig"])
    assert _reason(verifier, json.dumps(forged).encode()) == "bad_signature"
    tampered = dict(envelope, command=envelope["command"].replace("shelve", "unshelve"))
    assert _reason(verifier, json.dumps(tampered).encode()) == "bad_signature"
    unsigned = dict(envelope, sig=base64.b64encode(b"x" * 64).decode())
    assert _reason(verifier, json.dumps(unsigned).encode()) == "bad_signature"
    assert _reason(verifier, b'{"cmd":"ack"}') == "malformed"
    assert _reason(verifier, b"\xff" * 100_000) == "malformed"
    other = signer.command(SITE, "gw-b", "ping", "ops")
    assert _reason(verifier, signer.sign(other)) == "wrong_target"


def test_expired_future_and_overlong_commands_are_refused(
    keys: tuple[CommandSigner, CommandSigner, Path], verifier: CommandVerifier
) -> None:
    signer = keys[0]
    now = time.time_ns()

    def at(issued: int, expires: int) -> bytes:
        cmd = wire.Command(
            site=SITE, gateway=GATEWAY, id=f"{issued:032x}"[-32:], action="ping",
            issued_ns=issued, expires_ns=expires, issuer="ops",
        )  # fmt: skip
        return signer.sign(cmd)

    assert _reason(verifier, at(now - 120 * 10**9, now - 60 * 10**9)) == "expired"
    assert _reason(verifier, at(now + 600 * 10**9, now + 660 * 10**9)) == "not_yet_valid"
    assert _reason(verifier, at(now, now + 7200 * 10**9)) == "expired"  # valid too long
    assert verifier.verify(at(now, now + 30 * 10**9)).action == "ping"


def test_listener_counts_refusals_and_dispatches_to_handlers(
    keys: tuple[CommandSigner, CommandSigner, Path], verifier: CommandVerifier
) -> None:
    signer, rogue, _ = keys
    listener = CommandListener(verifier, host="127.0.0.1", port=1, client_id="x")
    acknowledged: list[wire.Command] = []
    listener.handlers["acknowledge"] = acknowledged.append

    def broken(command: wire.Command) -> None:
        raise RuntimeError(f"handler bug on {command.id}")

    listener.handlers["calibrate"] = broken
    assert listener.handle(signer.sign(signer.command(SITE, GATEWAY, "ping", "ops")))
    assert listener.handle(signer.sign(signer.command(SITE, GATEWAY, "acknowledge", "ops")))
    assert listener.handle(rogue.sign(rogue.command(SITE, GATEWAY, "acknowledge", "x"))) is None
    assert listener.handle(signer.sign(signer.command(SITE, GATEWAY, "config_push", "o"))) is None
    assert listener.handle(signer.sign(signer.command(SITE, GATEWAY, "calibrate", "o")))
    assert len(acknowledged) == 1
    assert dict(listener.counts) == {
        "accepted": 3,
        "refused_unknown_key": 1,
        "refused_unsupported": 1,
        "handler_failed": 1,
    }


def test_key_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(wire.TransportError, match=r"nope\.pub"):
        load_public_keys([str(tmp_path / "nope.pub")])
    generate_command_key(tmp_path / "a.key", tmp_path / "a.pub")
    with pytest.raises(FileExistsError):
        generate_command_key(tmp_path / "a.key", tmp_path / "b.pub")
    assert (tmp_path / "a.key").stat().st_mode & 0o077 == 0


def test_verified_engineer_commands_reach_the_gateway_engine(tmp_path: Path) -> None:
    from edge.gateway import ENGINEER_ACTIONS, Gateway
    from tests.unit.test_polling import make_site

    gateway = Gateway(make_site(poll_ms=50), buffer_path=tmp_path / "b.db", mqtt_port=1)
    now = time.time_ns()
    command = wire.Command(
        site=SITE, gateway=GATEWAY, id="a" * 32, action="calibrate", issued_ns=now,
        expires_ns=now + 10**10, issuer="ops", args={"tag": "CH4_A", "minutes": 5},
    )  # fmt: skip
    assert "calibrate" in ENGINEER_ACTIONS
    gateway._engineer_command(command)
    assert (gateway.commands.executed, gateway.commands.rejected) == (1, 0)
    unknown = wire.Command(
        site=SITE, gateway=GATEWAY, id="b" * 32, action="reset", issued_ns=now,
        expires_ns=now + 10**10, issuer="ops", args={"rule": "no-such-rule"},
    )  # fmt: skip
    gateway._engineer_command(unknown)
    assert gateway.commands.rejected == 1
