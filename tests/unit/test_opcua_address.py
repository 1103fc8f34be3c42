"""OPC UA addresses, StatusCode -> quality, and the OPC UA config shapes (pure)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_drivers import DeviceSpec, PointSpec, Quality, Reason
from device_drivers.opcua import (
    OpcUaPlan,
    OpcUaPoint,
    RateLimitFilter,
    check_node_id,
    judge_value,
    parse_browse_path,
    quality_of_status,
)
from edge.config import ConfigError, OpcUaActuator, OpcUaTag, load_site

names = st.text(
    alphabet=st.characters(blacklist_characters="/:", blacklist_categories=("Cs", "Zs", "Cc")),
    min_size=1,
    max_size=20,
)
segments = st.lists(st.tuples(st.none() | st.integers(0, 65535), names), min_size=1, max_size=6)


@given(segments)
def test_browse_path_round_trips(parts: list[tuple[int | None, str]]) -> None:
    text = "/".join(name if ns is None else f"{ns}:{name}" for ns, name in parts)
    assert parse_browse_path(text) == tuple(parts)


@given(st.integers(0, 65535), st.integers(0, 2**32 - 1))
def test_numeric_node_ids_are_accepted(ns: int, ident: int) -> None:
    assert check_node_id(f"ns={ns};i={ident}") == f"ns={ns};i={ident}"


@pytest.mark.parametrize(
    "bad", ["", "ns=2", "s=", "ns=70000;i=1", "i=99999999999", "x=1", "ns=2;g=not-a-guid"]
)
def test_malformed_node_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_node_id(bad)


@pytest.mark.parametrize("bad", ["", "/a", "a/", "a//b", "x:y", "70000:a"])
def test_malformed_browse_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_browse_path(bad)


@given(st.integers(0, 2**32 - 1))
def test_status_severity_decides_quality(code: int) -> None:
    quality, reason = quality_of_status(code)
    severity = code >> 30
    expected = {0: Quality.GOOD, 1: Quality.UNCERTAIN}.get(severity, Quality.BAD)
    assert quality is expected
    assert (reason is None) == (quality is Quality.GOOD)  # every non-good value says why


@pytest.mark.parametrize(
    ("code", "quality", "reason"),
    [
        (0x0000_0000, Quality.GOOD, None),
        (0x0000_0400, Quality.GOOD, None),  # info bits do not change the severity
        (0x808C_0000, Quality.BAD, "sensor_failure"),
        (0x800A_0000, Quality.BAD, Reason.TIMEOUT),
        (0x8031_0000, Quality.BAD, Reason.COMMS_LOST),
        (0x4090_0000, Quality.UNCERTAIN, Reason.STALE),
        (0x4094_0000, Quality.UNCERTAIN, Reason.OVER_RANGE),
        (0x8034_0000, Quality.BAD, "config"),
        (0x8003_0000, Quality.BAD, "BadOutOfMemory"),  # unmapped: the status's own name
    ],
)
def test_known_status_codes(code: int, quality: Quality, reason: str | None) -> None:
    assert quality_of_status(code) == (quality, reason)


SPEC = PointSpec("CH4", OpcUaPoint(node="i=1"), scale=0.01, low=0.0, high=4.0)


@pytest.mark.parametrize(
    ("raw", "status", "quality", "value", "reason"),
    [
        (150, 0, Quality.GOOD, 1.5, None),
        (True, 0, Quality.GOOD, 0.01, None),
        (500, 0, Quality.BAD, 5.0, Reason.OVER_RANGE),
        (-1, 0, Quality.BAD, -0.01, Reason.OUT_OF_RANGE),
        (float("nan"), 0, Quality.BAD, None, Reason.DECODE),
        ("text", 0, Quality.BAD, None, Reason.DECODE),
        (None, 0x808C_0000, Quality.BAD, None, "sensor_failure"),
        (120, 0x4090_0000, Quality.UNCERTAIN, 1.2, Reason.STALE),
    ],
)
def test_judge_value(
    raw: object, status: int, quality: Quality, value: float | None, reason: str | None
) -> None:
    sample = judge_value(raw, status, SPEC, "dev", 1)
    assert (sample.quality, sample.reason) == (quality, reason)
    assert sample.value == (None if value is None else pytest.approx(value))


def test_plan_splits_subscribed_and_read_points() -> None:
    points = (
        PointSpec("a", OpcUaPoint(node="i=1")),
        PointSpec("b", OpcUaPoint(node="i=2", subscribe=False)),
        PointSpec("c", OpcUaPoint(browse_path="P/c", subscribe=False)),
    )
    plan = OpcUaPlan(DeviceSpec("d", 1, points))
    assert (plan.subscribed, plan.polled, plan.requests) == ((0,), (1, 2), 1)
    assert OpcUaPlan(DeviceSpec("d", 1, points[:1])).requests == 0
    with pytest.raises(ValueError, match="no OPC UA address"):
        OpcUaPlan(DeviceSpec("d", 1, (PointSpec("x", 7),)))


def test_rate_limit_holds_back_repeats_and_says_how_many() -> None:
    limit = RateLimitFilter(interval_s=60)
    record = logging.LogRecord("asyncua.x", logging.WARNING, "f", 1, "lost %s", ("a",), None)
    assert limit.filter(record)
    for _ in range(5):
        again = logging.LogRecord("asyncua.x", logging.WARNING, "f", 1, "lost %s", ("a",), None)
        assert not limit.filter(again)
    assert limit.suppressed == 5
    other = logging.LogRecord("asyncua.x", logging.WARNING, "f", 1, "other", (), None)
    assert limit.filter(other)
    limit.interval_s = 0
    last = logging.LogRecord("asyncua.x", logging.WARNING, "f", 1, "lost %s", ("a",), None)
    assert limit.filter(last)
    assert "5 similar" in str(last.msg)


SITE = """\
site: {id: s}
gateway: {id: g}
buffer: {path: BUFFER}
buses:
  - {id: plc, type: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}
devices:
  - id: gas
    bus: plc
    tags:
      - name: CH4
        profile: ch4
        TAG_ADDRESS
        location: {area: a, position: face}
  - id: gas2
    bus: plc
actuators:
  - {id: cut, kind: power_cut, device: gas, node: "ns=2;s=Cut"}
"""


def _load(tmp_path: Path, address: str, site: str = SITE) -> object:
    text = site.replace("BUFFER", str(tmp_path / "b.db")).replace("TAG_ADDRESS", address)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_site(path)


def test_opcua_tags_and_actuators_load(tmp_path: Path) -> None:
    site = _load(tmp_path, 'browse_path: "Panel/CH4"\n        deadband: 0.05')
    tag = site.config.devices[0].tags[0]  # type: ignore[attr-defined]
    assert isinstance(tag, OpcUaTag)
    assert tag.point() == OpcUaPoint(browse_path="Panel/CH4", deadband=0.05)
    assert isinstance(site.config.actuators[0], OpcUaActuator)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("address", "field", "words"),
    [
        ('node: "ns=2;s=A"\n        browse_path: "P/A"', "devices.0.tags.0", "exactly one"),
        ("mode: read", "devices.0.tags.0", "exactly one"),
        ('node: "nope"', "devices.0.tags.0.node", "not an OPC UA node id"),
        ('browse_path: "a//b"', "devices.0.tags.0.browse_path", "segment"),
        ('node: "i=1"\n        table: holding', "devices.0.tags.0.table", "Extra inputs"),
        ('node: "i=1"\n        deadband: -1', "devices.0.tags.0.deadband", "greater than"),
    ],
)
def test_bad_opcua_tags_name_file_line_device_field(
    tmp_path: Path, address: str, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, address)
    text = str(caught.value)
    issue = caught.value.issues[0]
    assert issue.file.endswith("site.yaml") and issue.line is not None
    assert issue.device == "gas"
    assert issue.field == field, text
    assert words in issue.message, text


def test_security_needs_certificate(tmp_path: Path) -> None:
    site = SITE.replace(
        'endpoint: "opc.tcp://127.0.0.1:4840"}', 'endpoint: "opc.tcp://h:4840", security: sign}'
    )
    with pytest.raises(ConfigError, match="safewatch certs opcua"):
        _load(tmp_path, 'node: "i=1"', site)
    bad = SITE.replace("opc.tcp://127.0.0.1:4840", "http://x")
    with pytest.raises(ConfigError, match=r"buses\.0\.endpoint"):
        _load(tmp_path, 'node: "i=1"', bad)
