"""How both sides reach the broker safely: TLS contexts, account names, client ids.

Stdlib only, like the rest of :mod:`wire`, so the gateway and the cloud build their
MQTT connections the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path

__all__ = [
    "COMMAND_KIND",
    "TransportError",
    "client_tls_context",
    "command_topic",
    "gateway_account",
    "read_secret",
    "secret_client_id",
]

COMMAND_KIND = "command"  # safewatch/v1/<site>/<gateway>/command: cloud -> gateway


class TransportError(ValueError):
    """A TLS file, secret or account name that cannot be used; the message names it."""


def client_tls_context(
    ca_file: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the broker (``ca_file``, or the system CAs) and its
    host name, TLS 1.2 or newer; with ``cert_file``/``key_file`` it presents a client
    certificate."""
    if (cert_file is None) != (key_file is None):
        raise TransportError("a client certificate needs both cert_file and key_file")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"CA file {ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file, password=key_password)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"client certificate {cert_file} / key {key_file}: {exc}") from exc
    return context


def read_secret(file: str | None = None, env_value: str | None = None) -> str | None:
    """A secret from a file (first line, e.g. a Docker/systemd credential) or an
    already-read environment value; None when neither is given."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise TransportError(f"secret file {file}: {exc.strerror or exc}") from exc
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise TransportError(f"secret file {file} is empty")
        return lines[0]
    return env_value or None


def gateway_account(site: str, gateway: str) -> str:
    """The broker user name of a gateway (one account per gateway)."""
    return f"{gateway}@{site}"  # "@" is in no id, so the name is unambiguous


def command_topic(site: str, gateway: str) -> str:
    return f"safewatch/v1/{site}/{gateway}/{COMMAND_KIND}"


def secret_client_id(prefix: str, secret: str | None) -> str:
    """``prefix`` plus a suffix derived from ``secret``: stable across restarts (the
    broker keeps the session), but not guessable by whoever lacks the secret, so no
    one can connect with it and take the session over. Without a secret: ``prefix``.
    """
    if not secret:
        return prefix
    tag = hmac.new(secret.encode("utf-8"), prefix.encode("utf-8"), hashlib.sha256)
    return f"{prefix}-{tag.hexdigest()[:20]}"
