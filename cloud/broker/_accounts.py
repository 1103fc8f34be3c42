"""Mosquitto password file, ACL file and listener configuration for SafeWatch."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import wire

__all__ = [
    "COMMANDER",
    "INGEST",
    "BrokerAccounts",
    "BrokerFiles",
    "TlsFiles",
    "acl_lines",
    "ensure_cloud_accounts",
    "mosquitto_hash",
    "mosquitto_verify",
    "render_conf",
]

INGEST = "safewatch-ingest"  # the cloud ingest: reads gateway topics, writes nothing
COMMANDER = "safewatch-commander"  # the cloud side that sends commands to gateways
_ITERATIONS = 1000
_GATEWAY_KINDS = ("telemetry", "alarms", "events", "status")
_ACCOUNT = re.compile(r"^[A-Za-z0-9_.\-@]{1,160}$")


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS
) -> str:
    """A Mosquitto 2 password-file hash: ``$7$<iterations>$<salt>$<PBKDF2-SHA512>``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_verify(password: str, encoded: str) -> bool:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    expected = mosquitto_hash(password, salt=salt, iterations=int(parts[2]))
    return hmac.compare_digest(expected, encoded)


def acl_lines(account: str) -> list[str]:
    """The ACL block of one account (see the package docstring for the three kinds)."""
    root = wire.TOPIC_ROOT
    if account == INGEST:
        return [f"user {account}", *(f"topic read {root}/+/+/{k}" for k in _GATEWAY_KINDS)]
    if account == COMMANDER:
        return [f"user {account}", f"topic write {root}/+/+/{wire.COMMAND_KIND}"]
    gateway, _, site = account.partition("@")
    if not gateway or not site:
        raise ValueError(f"{account!r} is neither a gateway account (gateway@site) nor a cloud one")
    return [
        f"user {account}",
        *(f"topic write {root}/{site}/{gateway}/{k}" for k in _GATEWAY_KINDS),
        f"topic read {wire.command_topic(site, gateway)}",
    ]


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key; ``ca_file`` set: clients must present a certificate
    signed by it (``require_certificate``)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    require_client_cert: bool = False


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path

    @property
    def passwd(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    @property
    def conf(self) -> Path:
        return self.directory / "safewatch.conf"


def render_conf(files: BrokerFiles, *, bind: str, port: int, tls: TlsFiles | None) -> str:
    """A Mosquitto configuration: one listener, no anonymous clients, our passwd and acl."""
    lines = [
        "# SafeWatch broker listener: written by `safewatch broker init`; edit with care.",
        "# Include it from mosquitto.conf (Debian: /etc/mosquitto/conf.d/).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        f"listener {port} {bind}",
    ]
    if tls is None:
        lines.insert(2, "# WARNING: no TLS: passwords and data cross the network in clear text.")
    else:
        lines += [
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            "tls_version tlsv1.2",
        ]
        if tls.ca_file is not None:
            lines.append(f"cafile {tls.ca_file}")
        lines.append(f"require_certificate {'true' if tls.require_client_cert else 'false'}")
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner (and group) only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


class BrokerAccounts:
    """The accounts in ``files.passwd``; every change rewrites ``passwd`` and ``acl``.

    Mosquitto rereads both on SIGHUP (``systemctl reload mosquitto``).
    """

    def __init__(self, files: BrokerFiles) -> None:
        self.files = files

    def _read(self) -> dict[str, str]:
        accounts: dict[str, str] = {}
        if not self.files.passwd.exists():
            return accounts
        for line in self.files.passwd.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, hashed = line.partition(":")
                accounts[name] = hashed
        return accounts

    def _write(self, accounts: dict[str, str]) -> None:
        self.files.directory.mkdir(parents=True, exist_ok=True)
        _write_private(
            self.files.passwd, "".join(f"{n}:{h}\n" for n, h in sorted(accounts.items()))
        )
        blocks = ["# SafeWatch broker ACL: written by `safewatch broker`; do not edit."]
        for name in sorted(accounts):
            blocks.append("\n".join(acl_lines(name)))
        _write_private(self.files.acl, "\n\n".join(blocks) + "\n")

    def names(self) -> list[str]:
        return sorted(self._read())

    def set_password(self, account: str, password: str | None = None) -> str:
        """Create or re-key ``account``; returns its (new) password."""
        if not _ACCOUNT.fullmatch(account):
            raise ValueError(f"bad account name {account!r}")
        acl_lines(account)  # refuses names that are no known kind
        password = password or secrets.token_urlsafe(32)
        accounts = self._read()
        accounts[account] = mosquitto_hash(password)
        self._write(accounts)
        return password

    def add_gateway(self, site: str, gateway: str, password: str | None = None) -> tuple[str, str]:
        """(account, password) of a new or re-keyed gateway account."""
        for value, what in ((site, "site"), (gateway, "gateway")):
            if not re.fullmatch(wire.ID_PATTERN, value):
                raise ValueError(f"{what} id {value!r} is not [A-Za-z0-9_.-]+")
        account = wire.gateway_account(site, gateway)
        return account, self.set_password(account, password)

    def remove(self, account: str) -> bool:
        accounts = self._read()
        if accounts.pop(account, None) is None:
            return False
        self._write(accounts)
        return True

    def check(self, account: str, password: str) -> bool:
        hashed = self._read().get(account)
        return hashed is not None and mosquitto_verify(password, hashed)


def ensure_cloud_accounts(accounts: BrokerAccounts, names: Iterable[str]) -> dict[str, str]:
    """Create the cloud accounts that do not exist yet; their new passwords by name."""
    existing = set(accounts.names())
    return {n: accounts.set_password(n) for n in names if n not in existing}
