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

import re
from typing import Annotated, Final, Literal

import msgspec

WIRE_VERSION: Final = 1
TOPIC_ROOT: Final = "safewatch/v1"

QualityName = Literal["good", "uncertain", "bad"]
AlarmLevel = Literal["normal", "alarm", "cut", "fault"]
TopicKind = Literal["telemetry", "alarms", "events", "status"]

# -- limits ---------------------------------------------------------------------------------
# Every field is bounded here, at the schema, so nothing downstream has to re-check:
# a message that decodes is safe for the gap arithmetic (64-bit signed columns), for
# InfluxDB line protocol (names that could break it are refused, not escaped away)
# and for the SQL store (string columns are sized to these limits).

ID_PATTERN: Final = r"^[A-Za-z0-9_.\-]+$"
"""Site, gateway, device, tag, kind and actuator ids; the same rule as the site config's
``Identifier`` (edge/config/_models.py: 1..64 characters of letters, digits, ``_ . -``).
The wire may not import the edge, so the pattern lives here too; a test holds them equal."""
ID_MAX_LEN: Final = 64

NAME_PATTERN: Final = r"^(?!#)[^\x00-\x1f\x7f]*(?<!\\)$"
"""Free-text tag values (area, position, unit) and texts: no control characters, no
leading ``#`` (a line-protocol comment) and no trailing backslash (it would escape the
separator after it)."""
NAME_MAX_LEN: Final = 128
UNIT_MAX_LEN: Final = 32
TEXT_MAX_LEN: Final = 1024

SEQ_MAX: Final = 2**63 - 1
"""Sequence numbers lie in [0, 2**63): they fit a signed 64-bit column, always."""
TS_NS_MIN: Final = 0
TS_NS_MAX: Final = 2**63 - 2
"""InfluxDB's largest valid timestamp (1.x ``models.MaxNanoTime``); before 1970 is refused too."""
FLOAT_MAX: Final = 1.7976931348623157e308
MAX_POINTS: Final = 5_000
"""Points in one telemetry batch (the gateway's batcher sends at most 500 by default; 5,000
points are about 750 kB, within the broker's packet limit)."""
MAX_ACTUATORS: Final = 64
MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Bigger payloads are refused before parsing: the shipped broker's ``max_packet_size``
(ansible/roles/cloud/files/mosquitto-limits.conf) refuses them before that."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LEN, pattern=ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX_LEN, pattern=NAME_PATTERN)]
Unit = Annotated[str, msgspec.Meta(max_length=UNIT_MAX_LEN, pattern=NAME_PATTERN)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_MAX_LEN, pattern=NAME_PATTERN)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
TimestampNs = Annotated[int, msgspec.Meta(ge=TS_NS_MIN, le=TS_NS_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
Finite = Annotated[float, msgspec.Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
Version = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]

# A telemetry point's strings carry their lengths in Meta but their patterns are checked
# by decode() once per distinct series (memoised): msgspec runs a Python regex per field,
# which made decoding 25x slower (about 22 us instead of 0.9 us per point).
_PointId = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LEN)]
_PointName = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX_LEN)]
_PointUnit = Annotated[str, msgspec.Meta(max_length=UNIT_MAX_LEN)]
_PointText = Annotated[str, msgspec.Meta(max_length=TEXT_MAX_LEN)]


class WireError(ValueError):
    """A message or topic does not follow the wire contract."""


class Point(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One value of one tag, stamped at the gateway (``ts_ns``, Unix ns).

    tag, device and kind follow :data:`ID_PATTERN`; unit, area, position and
    reason follow :data:`NAME_PATTERN` (checked by :func:`decode`).
    """

    tag: _PointId
    device: _PointId
    kind: _PointId  # the InfluxDB measurement
    unit: _PointUnit
    area: _PointName
    position: _PointName
    value: Finite | None
    quality: QualityName
    ts_ns: TimestampNs
    reason: _PointText | None = None


class TelemetryBatch(msgspec.Struct, frozen=True, tag="telemetry"):
    gateway: Id
    site: Id
    seq: Seq
    sent_ns: TimestampNs
    points: Annotated[list[Point], msgspec.Meta(max_length=MAX_POINTS)]
    v: Version = WIRE_VERSION


class AlarmEvent(msgspec.Struct, frozen=True, tag="alarm"):
    """A change of a tag's alarm level, decided at the gateway.

    ``actuators`` lists the actuator ids the gateway commanded for this change
    (e.g. the power-cut relay on entering ``cut``/``fault``, released on
    leaving it). ``reason`` is the machine-readable cause (``above_cut``,
    ``over_range``, ``stale``, ``fan_stopped``, ``feedback_missing``...; prefixed
    ``calibration:`` during a declared calibration); empty from older gateways.
    """

    gateway: Id
    site: Id
    seq: Seq
    alarm_id: Id
    tag: Id
    device: Id
    kind: Id
    area: Name
    position: Name
    level: AlarmLevel
    previous: AlarmLevel
    value: Finite | None
    threshold: Finite | None
    ts_ns: TimestampNs
    message: Text
    actuators: Annotated[list[Id], msgspec.Meta(max_length=MAX_ACTUATORS)] = []
    v: Version = WIRE_VERSION
    reason: Text = ""
    # ISA-18.2 alarm state on the gateway (edge/alarm_manager.py); empty from older gateways
    state: Annotated[str, msgspec.Meta(max_length=32)] = ""
    priority: Annotated[str, msgspec.Meta(max_length=16)] = ""
    actor: Text = ""  # who acted (operator actions), empty for condition changes
    # the operator console answering for the area (alarms.consoles; the gateway id when
    # none is configured): EEMUA 191 counts alarms and floods per operator; empty from
    # older gateways
    console: Annotated[str, msgspec.Meta(max_length=64)] = ""


class GapEvent(msgspec.Struct, frozen=True, tag="gap"):
    """Telemetry that the gateway lost before sending, as a range of its sequence numbers.

    ``dropped`` counts **sequence numbers** (``last_seq - first_seq + 1``), not points: a
    lost telemetry batch, whatever its size, is one number (a ``restart`` gap for a killed
    run's unflushed tail is one number of unknown size). The gateway logs and counts the
    points (``points_lost``). In the cloud, a gateway's ``gaps`` (numbers never received)
    minus its ``dropped`` (numbers the gateway marked) is the unexplained loss.
    """

    gateway: Id
    site: Id
    seq: Seq
    first_seq: Seq
    last_seq: Seq
    dropped: Count
    reason: Text
    ts_ns: TimestampNs
    v: Version = WIRE_VERSION


class GatewayStatus(msgspec.Struct, frozen=True, tag="status"):
    gateway: Id
    site: Id
    state: Literal["online", "offline"]
    ts_ns: TimestampNs
    version: Annotated[str, msgspec.Meta(max_length=64, pattern=NAME_PATTERN)] = ""
    v: Version = WIRE_VERSION


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


def decode(payload: bytes | bytearray | memoryview) -> Message:
    """Decode any wire message; raise :class:`WireError` naming what is wrong.

    Nothing else escapes: msgspec's errors, invalid UTF-8 inside a string
    (``UnicodeDecodeError``), too deep nesting, a payload of the wrong type all
    become a :class:`WireError` (a hypothesis fuzz test holds this).
    """
    try:
        size = len(payload)
    except TypeError as exc:
        raise WireError(f"payload of type {type(payload).__name__} is not bytes") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise WireError(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        message = _decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        raise WireError(f"malformed message: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise WireError(f"malformed message: invalid UTF-8: {exc}") from exc
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as exc:
        raise WireError(f"malformed message: {type(exc).__name__}: {exc}") from exc
    if message.v != WIRE_VERSION:
        raise WireError(f"unsupported wire version {message.v}")
    if isinstance(message, TelemetryBatch):
        _check_points(message.points)
    elif isinstance(message, GapEvent) and message.first_seq > message.last_seq:
        raise WireError(f"gap first_seq {message.first_seq} > last_seq {message.last_seq}")
    return message


_ID_RE: Final = re.compile(ID_PATTERN)
_NAME_RE: Final = re.compile(NAME_PATTERN)
_SERIES_FIELDS: Final = (
    ("tag", _ID_RE),
    ("device", _ID_RE),
    ("kind", _ID_RE),
    ("unit", _NAME_RE),
    ("area", _NAME_RE),
    ("position", _NAME_RE),
)
# tag -> (device, kind, unit, area, position) of a series whose patterns passed. Keyed by
# tag and compared field by field: cheaper than hashing a six-string tuple for every point.
_valid_series: dict[str, tuple[str, str, str, str, str]] = {}
_valid_reasons: set[str] = set()
_MEMO_MAX: Final = 100_000


def _refuse(index: int, name: str, value: str, rule: re.Pattern[str]) -> WireError:
    return WireError(
        f"malformed message: Expected `str` matching regex {rule.pattern!r}, got {value!r}"
        f" - at `$.points[{index}].{name}`"
    )


def _check_points(points: list[Point]) -> None:
    """The patterns of every point's strings, checked once per distinct series."""
    valid = _valid_series
    for index, p in enumerate(points):
        known = valid.get(p.tag)
        if (
            known is None
            or known[0] != p.device
            or known[1] != p.kind
            or known[2] != p.unit
            or known[3] != p.area
            or known[4] != p.position
        ):
            series = (p.tag, p.device, p.kind, p.unit, p.area, p.position)
            for (name, rule), value in zip(_SERIES_FIELDS, series, strict=True):
                if rule.search(value) is None:
                    raise _refuse(index, name, value, rule)
            if len(valid) >= _MEMO_MAX:
                valid.clear()
            valid[p.tag] = series[1:]
        reason = p.reason
        if reason is not None and reason not in _valid_reasons:
            if _NAME_RE.search(reason) is None:
                raise _refuse(index, "reason", reason, _NAME_RE)
            if len(_valid_reasons) >= _MEMO_MAX:
                _valid_reasons.clear()
            _valid_reasons.add(reason)
