"""Commands from the cloud: verified (Ed25519 signature, target, expiry, replay) before use.

The gateway subscribes to its own command topic on a connection of its own (the
uplink's stays as it is). Whatever does not verify is refused, logged and counted
by reason; nothing a command says is acted on before every check passed. Features
register handlers per action (``CommandListener.handlers``); an action without a
handler is refused as ``unsupported``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import aiomqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import wire
from wire.backoff import Backoff

__all__ = ["CommandListener", "CommandRefused", "CommandVerifier", "load_public_keys"]

log = logging.getLogger(__name__)

CommandHandler = Callable[[wire.Command], None]


class CommandRefused(Exception):
    """A command that is not acted on; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def load_public_keys(files: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """Ed25519 public keys (PEM) by key id; raises :class:`wire.TransportError`."""
    keys: dict[str, Ed25519PublicKey] = {}
    for file in files:
        try:
            key = serialization.load_pem_public_key(Path(file).read_bytes())
        except (OSError, ValueError) as exc:
            raise wire.TransportError(f"command public key {file}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise wire.TransportError(f"command public key {file} is not an Ed25519 key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys[wire.key_id(raw)] = key
    return keys


class CommandVerifier:
    """Checks one payload; remembers command ids until they expire (replays)."""

    def __init__(
        self,
        site: str,
        gateway: str,
        keys: dict[str, Ed25519PublicKey],
        *,
        max_skew_s: float = 60.0,
        max_ttl_s: float = 3600.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.site = site
        self.gateway = gateway
        self.keys = keys
        self.max_skew_ns = int(max_skew_s * 1e9)
        self.max_ttl_ns = int(max_ttl_s * 1e9)
        self._clock = clock
        self._seen: dict[str, int] = {}  # command id -> expiry

    def verify(self, payload: bytes) -> wire.Command:
        try:
            envelope = wire.decode_envelope(payload)
        except wire.WireError as exc:
            raise CommandRefused("malformed", str(exc)[:200]) from exc
        key = self.keys.get(envelope.kid)
        if key is None:
            raise CommandRefused("unknown_key", f"no public key {envelope.kid!r}")
        try:
            signature = base64.b64decode(envelope.sig, validate=True)
            key.verify(signature, envelope.command.encode("utf-8"))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise CommandRefused("bad_signature", "signature does not verify") from exc
        try:
            command = wire.decode_command(envelope.command)
        except wire.WireError as exc:
            raise CommandRefused("malformed", str(exc)[:200]) from exc
        if (command.site, command.gateway) != (self.site, self.gateway):
            raise CommandRefused(
                "wrong_target", f"for {command.site}/{command.gateway}, not this gateway"
            )
        now = self._clock()
        if command.issued_ns > now + self.max_skew_ns:
            raise CommandRefused("not_yet_valid", "issued in the future")
        if command.expires_ns <= now or command.expires_ns - command.issued_ns > self.max_ttl_ns:
            raise CommandRefused("expired", "expired or valid for too long")
        self._forget(now)
        if command.id in self._seen:
            raise CommandRefused("replayed", f"command {command.id} was already received")
        self._seen[command.id] = command.expires_ns
        return command

    def _forget(self, now: int) -> None:
        if len(self._seen) > 1000:
            self._seen = {i: exp for i, exp in self._seen.items() if exp > now}


class CommandListener:
    """Subscribes to the gateway's command topic and hands verified commands on."""

    def __init__(
        self,
        verifier: CommandVerifier,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.verifier = verifier
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.timeout_s = timeout_s
        self.handlers: dict[str, CommandHandler] = {"ping": self._ping}
        self.counts: collections.Counter[str] = collections.Counter()
        self.subscribed = asyncio.Event()

    @property
    def topic(self) -> str:
        return wire.command_topic(self.verifier.site, self.verifier.gateway)

    def _ping(self, command: wire.Command) -> None:
        log.info("command ping %s from %s", command.id, command.issuer)

    def handle(self, payload: bytes) -> wire.Command | None:
        """Verify and dispatch one payload; None (logged, counted) when refused."""
        try:
            command = self.verifier.verify(payload)
            handler = self.handlers.get(command.action)
            if handler is None:
                raise CommandRefused("unsupported", f"no handler for {command.action!r}")
        except CommandRefused as exc:
            self.counts[f"refused_{exc.reason}"] += 1
            log.warning("command refused on %s: %s", self.topic, exc)
            return None
        self.counts["accepted"] += 1
        log.info("command %s %s from %s accepted", command.action, command.id, command.issuer)
        try:
            handler(command)
        except Exception:  # a handler's bug must not end the listener
            self.counts["handler_failed"] += 1
            log.exception("command %s %s: handler failed", command.action, command.id)
        return command

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = Backoff(initial=0.5, cap=30.0)
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    username=self.username,
                    password=self.password,
                    tls_context=self.tls_context,
                    timeout=self.timeout_s,
                ) as client:
                    await client.subscribe(self.topic, qos=1, timeout=self.timeout_s)
                    self.subscribed.set()
                    backoff.reset()
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.handle(bytes(payload))
                        else:
                            self.counts["refused_malformed"] += 1
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                delay = backoff.next_delay()
                log.warning("command listener: %s; retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
