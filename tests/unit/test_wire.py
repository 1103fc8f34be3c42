"""The wire contract: one byte-exact example of each message, and its guards."""

from __future__ import annotations

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
        ),
        b'{"type":"alarm","gateway":"gw-1201","site":"demo-mine","seq":42,'
        b'"alarm_id":"gw-1201-CH4_1201_T1-7","tag":"CH4_1201_T1","device":"ch4-1201-t1",'
        b'"kind":"ch4","area":"1201 face","position":"face","level":"cut","previous":"alarm",'
        b'"value":1.62,"threshold":1.5,"ts_ns":1764000000000000000,'
        b'"message":"CH4 1.62 % >= cut 1.5 %: power cut","actuators":["power-1201"],"v":1}',
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
