"""Commands from the cloud to one gateway, signed (Ed25519) by the cloud.

A command travels on ``safewatch/v1/<site>/<gateway>/command`` as an envelope::

    {"kid": "<key id>", "command": "<the command's JSON text>", "sig": "<base64>"}

The signature covers the exact UTF-8 bytes of ``command``, so nothing is re-encoded
before checking. The gateway holds only public keys: a gateway that is taken over
cannot sign commands for the others. The ACL already lets only the commander account
publish there; the signature is the second, end-to-end guard (a broker admin or a
leaked commander password cannot forge a command). Signing and verifying need
``cryptography`` and live with each side (``cloud.commands``, ``edge.commands``); this
module is the format.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final, Literal

import msgspec

from wire._schema import ID_MAX_LEN, ID_PATTERN, WireError

__all__ = [
    "COMMAND_ACTIONS",
    "MAX_COMMAND_BYTES",
    "Command",
    "CommandAction",
    "CommandEnvelope",
    "decode_command",
    "decode_envelope",
    "encode_command",
    "encode_envelope",
    "key_id",
]

MAX_COMMAND_BYTES: Final = 16_384
CommandAction = Literal[
    "ping",
    "reset",
    "calibrate",
    "end_calibration",
    "lockout_test",
    "acknowledge",
    "shelve",
    "unshelve",
    "out_of_service",
    "return_to_service",
    "config_push",
]
COMMAND_ACTIONS: Final = (
    "ping",
    "reset",
    "calibrate",
    "end_calibration",
    "lockout_test",
    "acknowledge",
    "shelve",
    "unshelve",
    "out_of_service",
    "return_to_service",
    "config_push",
)

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LEN, pattern=ID_PATTERN)]
_ArgValue = str | int | float | bool | None
_Args = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], _ArgValue], msgspec.Meta(max_length=32)
]


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    site: _Id
    gateway: _Id
    id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]  # unique: replays are refused
    action: CommandAction
    issued_ns: Annotated[int, msgspec.Meta(ge=0)]
    expires_ns: Annotated[int, msgspec.Meta(ge=0)]
    issuer: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    args: _Args = msgspec.field(default_factory=dict)


class CommandEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kid: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
    command: Annotated[str, msgspec.Meta(max_length=MAX_COMMAND_BYTES)]
    sig: Annotated[str, msgspec.Meta(max_length=128)]


_command_decoder = msgspec.json.Decoder(Command)
_envelope_decoder = msgspec.json.Decoder(CommandEnvelope)


def key_id(public_key_raw: bytes) -> str:
    """The id of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def encode_command(command: Command) -> str:
    return msgspec.json.encode(command).decode("utf-8")


def encode_envelope(kid: str, command_text: str, sig_b64: str) -> bytes:
    return msgspec.json.encode(CommandEnvelope(kid=kid, command=command_text, sig=sig_b64))


def decode_envelope(payload: bytes) -> CommandEnvelope:
    if len(payload) > 2 * MAX_COMMAND_BYTES:
        raise WireError(f"command envelope of {len(payload)} bytes is too large")
    try:
        return _envelope_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"bad command envelope: {exc}") from exc


def decode_command(text: str) -> Command:
    try:
        return _command_decoder.decode(text.encode("utf-8"))
    except msgspec.DecodeError as exc:
        raise WireError(f"bad command: {exc}") from exc
