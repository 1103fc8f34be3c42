"""Signing commands for gateways (Ed25519) and sending them as the commander account."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import wire
from cloud.audit import AuditAction, AuditLog

__all__ = ["AUDIT_OF", "CommandSender", "CommandSigner", "generate_command_key", "send_command"]

# The audit action recorded for each command sent to a gateway (and, by the alarm-state
# mirror, for the same action applied on the gateway: cloud/alarm_states.py).
AUDIT_OF: dict[str, str] = {
    "ping": "command_sent",
    "reset": AuditAction.OVERRIDE,
    "calibrate": AuditAction.CALIBRATION,
    "end_calibration": AuditAction.CALIBRATION,
    "lockout_test": AuditAction.LOCKOUT_TEST,
    "acknowledge": AuditAction.ALARM_ACKNOWLEDGED,
    "shelve": AuditAction.ALARM_SHELVED,
    "unshelve": "alarm_unshelved",
    "out_of_service": "alarm_out_of_service",
    "return_to_service": "alarm_returned_to_service",
    "config_push": AuditAction.CONFIG_CHANGED,
}


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_command_key(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private key mode 600); returns its key id.

    The private key stays with the cloud; every gateway gets the public key file.
    """
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return wire.key_id(_raw_public(key))


class CommandSigner:
    """Signs commands with one private key (PEM file)."""

    def __init__(self, private_key_file: str | Path) -> None:
        try:
            key = serialization.load_pem_private_key(Path(private_key_file).read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise wire.TransportError(f"command key {private_key_file}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise wire.TransportError(f"command key {private_key_file} is not an Ed25519 key")
        self._key = key
        self.kid = wire.key_id(_raw_public(key))

    def command(
        self,
        site: str,
        gateway: str,
        action: wire.CommandAction,
        issuer: str,
        args: Mapping[str, str | int | float | bool | None] | None = None,
        ttl_s: float = 60.0,
    ) -> wire.Command:
        now = time.time_ns()
        return wire.Command(
            site=site,
            gateway=gateway,
            id=uuid.uuid4().hex,
            action=action,
            issued_ns=now,
            expires_ns=now + int(ttl_s * 1e9),
            issuer=issuer,
            args=dict(args or {}),
        )

    def sign(self, command: wire.Command) -> bytes:
        """The MQTT payload: the command's JSON text, signed, in an envelope."""
        text = wire.encode_command(command)
        sig = base64.b64encode(self._key.sign(text.encode("utf-8"))).decode("ascii")
        return wire.encode_envelope(self.kid, text, sig)


async def send_command(
    signer: CommandSigner,
    command: wire.Command,
    *,
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    tls_context: ssl.SSLContext | None,
    timeout_s: float = 10.0,
) -> None:
    """Publish one signed command (QoS 1) as the commander account."""
    async with aiomqtt.Client(
        host,
        port,
        identifier=wire.secret_client_id("safewatch-commander", password)
        + f"-{uuid.uuid4().hex[:8]}",
        username=username,
        password=password,
        tls_context=tls_context,
        timeout=timeout_s,
    ) as client:
        await client.publish(
            wire.command_topic(command.site, command.gateway),
            signer.sign(command),
            qos=1,
            timeout=timeout_s,
        )


class CommandSender:
    """Signs, publishes (as the commander account) and audits commands for the API."""

    def __init__(
        self,
        signer: CommandSigner,
        audit: AuditLog,
        *,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        tls_context: ssl.SSLContext | None,
        timeout_s: float = 10.0,
    ) -> None:
        self.signer = signer
        self.audit = audit
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.timeout_s = timeout_s

    async def send(
        self,
        site: str,
        gateway: str,
        action: wire.CommandAction,
        issuer: str,
        args: Mapping[str, str | int | float | bool | None],
        ttl_s: float,
    ) -> wire.Command:
        """Publish one command; raises ``aiomqtt.MqttError``/``TimeoutError`` on broker
        trouble and ``StoreError`` if the audit row cannot be written (after sending)."""
        command = self.signer.command(site, gateway, action, issuer, args, ttl_s)
        await send_command(
            self.signer,
            command,
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            tls_context=self.tls_context,
            timeout_s=self.timeout_s,
        )
        await asyncio.to_thread(
            self.audit.record,
            issuer,
            AUDIT_OF.get(action, "command_sent"),
            f"{site}/{gateway}",
            {"command": command.id, "action": action, "args": dict(command.args)},
        )
        return command
