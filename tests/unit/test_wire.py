"""The wire contract: one byte-exact example of each message, and its guards."""

from __future__ import annotations

import msgspec
import pytest

import wire

POINT = wire.Point(
    tag="CH4_1201_T1",
    device="ch4-1201-t1",
    kind="ch4",
    unit="%",
    area="1201 face",
    position="face",
    value=1.62,
    quality="good",
    ts_ns=1_764_000_000_000_000_000,
)

EXAMPLES: list[tuple[wire.Message, bytes]] = [
    (
        wire.TelemetryBatch(
            gateway="gw-1201",
            site="demo-mine",
            seq=41,
            sent_ns=1_764_000_000_500_000_000,
            points=[
                POINT,
                wire.Point(
                    tag="CO_1201",
                    device="env-1201",
                    kind="co",
                    unit="ppm",
                    area="1201 face",
                    position="return",
                    value=None,
                    quality="bad",
                    ts_ns=1_764_000_000_000_000_000,
                    reason="timeout",
                ),
            ],
        ),
        b'{"type":"telemetry","gateway":"gw-1201","site":"demo-mine","seq":41,'
        b'"sent_ns":1764000000500000000,"points":[{"tag":"CH4_1201_T1","device":"ch4-1201-t1",'
        b'"kind":"ch4","unit":"%","area":"1201 face","position":"face","value":1.62,'
        b'"quality":"good","ts_ns":1764000000000000000,"reason":null},{"tag":"CO_1201",'
        b'"device":"env-1201","kind":"co","unit":"ppm","area":"1201 face","position":"return",'
        b'"value":null,"quality":"bad","ts_ns":1764000000000000000,"reason":"timeout"}],"v":1}',
    ),
    (
        wire.AlarmEvent(
            gateway="gw-1201",
            site="demo-mine",
            seq=42,
            alarm_id="gw-1201-CH4_1201_T1-7",
            tag="CH4_1201_T1",
            device="ch4-1201-t1",
            kind="ch4",
            area="1201 face",
            position="face",
            level="cut",
            previous="alarm",
            value=1.62,
            threshold=1.5,
            ts_ns=1_764_000_000_000_000_000,
            message="CH4 1.62 % >= cut 1.5 %: power cut",
            actuators=["power-1201"],
            reason="above_cut",
            state="unacknowledged",
            priority="critical",
            console="panel-1201",
        ),
        b'{"type":"alarm","gateway":"gw-1201","site":"demo-mine","seq":42,'
        b'"alarm_id":"gw-1201-CH4_1201_T1-7","tag":"CH4_1201_T1","device":"ch4-1201-t1",'
        b'"kind":"ch4","area":"1201 face","position":"face","level":"cut","previous":"alarm",'
        b'"value":1.62,"threshold":1.5,"ts_ns":1764000000000000000,'
        b'"message":"CH4 1.62 % >= cut 1.5 %: power cut","actuators":["power-1201"],"v":1,'
        b'"reason":"above_cut","state":"unacknowledged","priority":"critical","actor":"",'
        b'"console":"panel-1201"}',
    ),
    (
        wire.GapEvent(
            gateway="gw-1201",
            site="demo-mine",
            seq=90,
            first_seq=50,
            last_seq=60,
            dropped=11,
            reason="buffer_full",
            ts_ns=1_764_000_000_000_000_000,
        ),
        b'{"type":"gap","gateway":"gw-1201","site":"demo-mine","seq":90,"first_seq":50,'
        b'"last_seq":60,"dropped":11,"reason":"buffer_full","ts_ns":1764000000000000000,"v":1}',
    ),
    (
        wire.GatewayStatus(
            gateway="gw-1201",
            site="demo-mine",
            state="online",
            ts_ns=1_764_000_000_000_000_000,
            version="0.1.0",
        ),
        b'{"type":"status","gateway":"gw-1201","site":"demo-mine","state":"online",'
        b'"ts_ns":1764000000000000000,"version":"0.1.0","v":1}',
    ),
]


@pytest.mark.parametrize(("message", "expected"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_encoding_is_byte_exact_and_round_trips(message: wire.Message, expected: bytes) -> None:
    assert wire.encode(message) == expected
    assert wire.decode(expected) == message


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        (EXAMPLES[0][0], "safewatch/v1/demo-mine/gw-1201/telemetry"),
        (EXAMPLES[1][0], "safewatch/v1/demo-mine/gw-1201/alarms"),
        (EXAMPLES[2][0], "safewatch/v1/demo-mine/gw-1201/events"),
        (EXAMPLES[3][0], "safewatch/v1/demo-mine/gw-1201/status"),
    ],
)
def test_each_message_has_its_topic(message: wire.Message, topic: str) -> None:
    assert wire.topic_of(message) == topic
    assert wire.parse_topic(topic)[:2] == ("demo-mine", "gw-1201")


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"{not json", "malformed"),
        (b'{"type":"telemetry","gateway":"g"}', "missing required field"),
        (b'{"type":"weather","gateway":"g"}', "Invalid value 'weather'"),
        (EXAMPLES[3][1].replace(b'"v":1', b'"v":2'), "unsupported wire version 2"),
    ],
)
def test_bad_payloads_raise_wire_error(payload: bytes, complaint: str) -> None:
    with pytest.raises(wire.WireError, match=complaint):
        wire.decode(payload)


@pytest.mark.parametrize(
    "topic",
    [
        "safewatch/v2/s/g/telemetry",
        "safewatch/v1/s/g",
        "safewatch/v1/s/g/weather",
        "x/v1/s/g/alarms",
    ],
)
def test_foreign_topics_are_rejected(topic: str) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_topic(topic)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#"])
def test_ids_that_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(wire.WireError):
        wire.topic_for(bad, "gw", "status")


# -- limits: every field is bounded at the schema -----------------------------------------

TELEMETRY = EXAMPLES[0][1]
ALARM = EXAMPLES[1][1]
GAP = EXAMPLES[2][1]


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (TELEMETRY.replace(b'"seq":41', b'"seq":-1'), r"\$.seq"),
        (TELEMETRY.replace(b'"seq":41', b'"seq":9223372036854775808'), r"\$.seq"),
        (TELEMETRY.replace(b'"seq":41', b'"seq":1e30'), r"\$.seq"),
        (TELEMETRY.replace(b'"sent_ns":1764000000500000000', b'"sent_ns":-5'), "sent_ns"),
        (
            TELEMETRY.replace(b'"ts_ns":1764000000000000000', b'"ts_ns":9223372036854775807', 1),
            r"points\[0\].ts_ns",
        ),
        (TELEMETRY.replace(b'"kind":"ch4"', b'"kind":"#ch4"'), r"points\[0\].kind"),
        (TELEMETRY.replace(b'"kind":"ch4"', b'"kind":""'), r"points\[0\].kind"),
        (TELEMETRY.replace(b'"kind":"ch4"', b'"kind":"ch 4"'), r"points\[0\].kind"),
        (TELEMETRY.replace(b'"area":"1201 face"', b'"area":"face\\\\"', 1), "area"),
        (TELEMETRY.replace(b'"area":"1201 face"', b'"area":"#face"', 1), "area"),
        (TELEMETRY.replace(b'"area":"1201 face"', b'"area":""', 1), "area"),
        (TELEMETRY.replace(b'"unit":"%"', b'"unit":"a\\nb"'), "unit"),
        (TELEMETRY.replace(b'"unit":"%"', b'"unit":"a\\u0000"'), "unit"),
        (TELEMETRY.replace(b'"gateway":"gw-1201"', b'"gateway":"gw/1201"'), "gateway"),
        (TELEMETRY.replace(b'"site":"demo-mine"', b'"site":"' + b"s" * 65 + b'"'), "site"),
        (TELEMETRY.replace(b'"tag":"CO_1201"', b'"tag":"CO+1201"'), "tag"),
        (TELEMETRY.replace(b'"value":1.62', b'"value":1e400'), "value"),
        (TELEMETRY.replace(b'"value":1.62', b'"value":NaN'), "malformed"),
        (TELEMETRY.replace(b'"value":1.62', b'"value":"1.62"'), "value"),
        (TELEMETRY.replace(b'"reason":"timeout"', b'"reason":"' + b"r" * 1025 + b'"'), "reason"),
        (TELEMETRY.replace(b'"device":"env-1201"', b'"device":"env-\xff"'), "UTF-8"),
        (TELEMETRY.replace(b'"device":"env-1201"', b'"device":"env-\xed\xa0\x80"'), "UTF-8"),
        (ALARM.replace(b'"threshold":1.5', b'"threshold":-1e999'), "threshold"),
        (ALARM.replace(b'"actuators":["power-1201"]', b'"actuators":["a b"]'), "actuators"),
        (ALARM.replace(b'"level":"cut"', b'"level":"CUT"'), "level"),
        (ALARM.replace(b'"message":"CH4', b'"message":"\\u0007CH4'), "message"),
        (GAP.replace(b'"first_seq":50', b'"first_seq":70'), "first_seq 70 > last_seq 60"),
        (GAP.replace(b'"dropped":11', b'"dropped":-11'), "dropped"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed"),
        (b'{"type":"status"' + b" " * (wire.MAX_PAYLOAD_BYTES), "exceeds"),
        (b"\xff\xfe\x00", "malformed"),
        (b"", "malformed"),
    ],
)
def test_out_of_bounds_fields_raise_wire_error_naming_the_field(
    payload: bytes, complaint: str
) -> None:
    with pytest.raises(wire.WireError, match=complaint):
        wire.decode(payload)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("device", "dev 1"),
        ("kind", "#ch4"),
        ("unit", "a\nb"),
        ("area", "face\\"),
        ("position", "#face"),
    ],
)
def test_a_known_tag_with_a_bad_series_field_is_still_refused(field: str, bad: str) -> None:
    # decode() remembers series whose patterns passed (by tag): a valid series must not
    # vouch for the same tag arriving with another, invalid, field.
    good = msgspec.structs.replace(POINT, tag="memo-tag")
    assert wire.decode(wire.encode(wire.TelemetryBatch("gw", "s", 1, 1, [good])))
    worse = msgspec.structs.replace(good, **{field: bad})
    with pytest.raises(wire.WireError, match=rf"points\[1\]\.{field}"):
        wire.decode(wire.encode(wire.TelemetryBatch("gw", "s", 2, 1, [good, worse])))


def test_a_batch_has_at_most_max_points() -> None:
    point = POINT
    full = wire.TelemetryBatch("gw", "s", 1, 1, [point] * wire.MAX_POINTS)
    assert len(wire.decode(wire.encode(full)).points) == wire.MAX_POINTS  # type: ignore[union-attr]
    over = wire.TelemetryBatch("gw", "s", 1, 1, [point] * (wire.MAX_POINTS + 1))
    with pytest.raises(wire.WireError, match="points"):
        wire.decode(wire.encode(over))


def test_extremes_inside_the_limits_decode() -> None:
    message = wire.TelemetryBatch(
        "g" * wire.ID_MAX_LEN,
        "s.-_9",
        wire.SEQ_MAX,
        wire.TS_NS_MAX,
        [
            wire.Point("t", "d", "k", "", "a\\b", "not-#-first", -1.7e308, "bad", wire.TS_NS_MIN),
            wire.Point("t", "d", "k", "µg/m³", "área", "x#", None, "good", 0, reason=""),
        ],
    )
    assert wire.decode(wire.encode(message)) == message


def test_non_bytes_payloads_raise_wire_error() -> None:
    with pytest.raises(wire.WireError, match="not bytes"):
        wire.decode(None)  # type: ignore[arg-type]
    with pytest.raises(wire.WireError, match="malformed"):
        wire.decode("{}")  # type: ignore[arg-type]


def test_wire_ids_follow_the_site_config_identifier() -> None:
    """The wire cannot import the edge, so it keeps its own copy of the pattern."""
    import typing

    from pydantic import TypeAdapter

    from edge.config._models import Identifier

    config_id: TypeAdapter[str] = TypeAdapter(Identifier)
    field = typing.get_args(Identifier)[1]
    constraints = {
        k: getattr(m, k) for m in field.metadata for k in ("pattern", "max_length") if hasattr(m, k)
    }
    assert constraints == {"pattern": wire.ID_PATTERN, "max_length": wire.ID_MAX_LEN}
    assert config_id.validate_python("gw-1201.a_b") == "gw-1201.a_b"


# -- fuzz: only WireError escapes wire.decode ---------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALID = [payload for _message, payload in EXAMPLES]


def _decode_or_wire_error(payload: bytes) -> None:
    try:
        message = wire.decode(payload)
    except wire.WireError:
        return
    # Whatever decodes is inside the limits: it round-trips and is routable.
    assert wire.decode(wire.encode(message)) == message
    wire.topic_of(message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_raise_only_wire_error(payload: bytes) -> None:
    _decode_or_wire_error(payload)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if action == "replace":
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif len(data) > 1:
            del data[at]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_messages_raise_only_wire_error(payload: bytes) -> None:
    _decode_or_wire_error(payload)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(VALID),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.none(),
)
def test_fuzz_field_values_raise_only_wire_error(
    valid: bytes, text: str, number: int | float | None
) -> None:
    import json

    document = json.loads(valid)
    for key in list(document):
        if key == "type":
            continue
        for replacement in (text, number):
            changed = dict(document, **{key: replacement})
            _decode_or_wire_error(json.dumps(changed, allow_nan=True).encode())
