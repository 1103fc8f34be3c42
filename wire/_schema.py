"""The edge -> cloud wire contract, version 1.

Topics: ``safewatch/v1/<site>/<gateway>/<kind>`` with kind one of
``telemetry``, ``alarms``, ``events``, ``status``.

Every buffered message (telemetry, alarm, event) carries the gateway id and a
per-gateway sequence number that increases monotonically across all three
kinds; the cloud detects gaps from it and drops duplicates after a resend.
``status`` is retained and is also the broker's last-will message.

Encoding is compact JSON via msgspec; field order is the declaration order, so
encoding is byte-stable (tests pin an example of each message).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

WIRE_VERSION: Final = 1
TOPIC_ROOT: Final = "safewatch/v1"

QualityName = Literal["good", "uncertain", "bad"]
AlarmLevel = Literal["normal", "alarm", "cut", "fault"]
TopicKind = Literal["telemetry", "alarms", "events", "status"]


class WireError(ValueError):
    """A message or topic does not follow the wire contract."""


class Point(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One value of one tag, stamped at the gateway (``ts_ns``, Unix ns)."""

    tag: str
    device: str
    kind: str
    unit: str
    area: str
    position: str
    value: float | None
    quality: QualityName
    ts_ns: int
    reason: str | None = None


class TelemetryBatch(msgspec.Struct, frozen=True, tag="telemetry"):
    gateway: str
    site: str
    seq: int
    sent_ns: int
    points: list[Point]
    v: int = WIRE_VERSION


class AlarmEvent(msgspec.Struct, frozen=True, tag="alarm"):
    """A change of a tag's alarm level, decided at the gateway.

    ``actuators`` lists the actuator ids the gateway commanded for this change
    (e.g. the power-cut relay on entering ``cut``/``fault``, released on
    leaving it).
    """

    gateway: str
    site: str
    seq: int
    alarm_id: str
    tag: str
    device: str
    kind: str
    area: str
    position: str
    level: AlarmLevel
    previous: AlarmLevel
    value: float | None
    threshold: float | None
    ts_ns: int
    message: str
    actuators: list[str] = []
    v: int = WIRE_VERSION


class GapEvent(msgspec.Struct, frozen=True, tag="gap"):
    """Telemetry that the gateway had to drop (buffer full) before sending."""

    gateway: str
    site: str
    seq: int
    first_seq: int
    last_seq: int
    dropped: int
    reason: str
    ts_ns: int
    v: int = WIRE_VERSION


class GatewayStatus(msgspec.Struct, frozen=True, tag="status"):
    gateway: str
    site: str
    state: Literal["online", "offline"]
    ts_ns: int
    version: str = ""
    v: int = WIRE_VERSION


Message = TelemetryBatch | AlarmEvent | GapEvent | GatewayStatus

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)

_KIND_OF: dict[type[msgspec.Struct], TopicKind] = {
    TelemetryBatch: "telemetry",
    AlarmEvent: "alarms",
    GapEvent: "events",
    GatewayStatus: "status",
}


def topic_for(site: str, gateway: str, kind: TopicKind) -> str:
    for part, name in ((site, "site"), (gateway, "gateway")):
        if not part or any(ch in part for ch in "/+#"):
            raise WireError(f"{name} id {part!r} cannot be used in an MQTT topic")
    return f"{TOPIC_ROOT}/{site}/{gateway}/{kind}"


def topic_of(message: Message) -> str:
    return topic_for(message.site, message.gateway, _KIND_OF[type(message)])


def parse_topic(topic: str) -> tuple[str, str, TopicKind]:
    """Split a topic into (site, gateway, kind) or raise :class:`WireError`."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise WireError(f"topic {topic!r} is not safewatch/v1/<site>/<gateway>/<kind>")
    kind = parts[4]
    if kind not in ("telemetry", "alarms", "events", "status"):
        raise WireError(f"topic {topic!r} has unknown kind {kind!r}")
    return parts[2], parts[3], kind  # type: ignore[return-value]


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> Message:
    """Decode any wire message; raise :class:`WireError` naming what is wrong."""
    try:
        message = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed message: {exc}") from exc
    if message.v != WIRE_VERSION:
        raise WireError(f"unsupported wire version {message.v}")
    return message
