"""Line protocol from telemetry batches: byte-exact examples, escaping, missing values."""

from __future__ import annotations

import math

import wire
from cloud.storage import LineBuilder, to_lines

TS = 1_700_000_000_123_456_789


def _point(**overrides: object) -> wire.Point:
    fields: dict[str, object] = {
        "tag": "CH4-101",
        "device": "gas-1",
        "kind": "ch4",
        "unit": "%",
        "area": "panel-3",
        "position": "face",
        "value": 1.25,
        "quality": "good",
        "ts_ns": TS,
        "reason": None,
    }
    fields.update(overrides)
    return wire.Point(**fields)  # type: ignore[arg-type]


def _batch(
    *points: wire.Point, site: str = "demo-mine", gateway: str = "gw-1"
) -> wire.TelemetryBatch:
    return wire.TelemetryBatch(gateway=gateway, site=site, seq=7, sent_ns=TS, points=list(points))


def test_plain_point_has_sorted_tags_float_value_and_ns_timestamp() -> None:
    assert to_lines(_batch(_point())) == [
        "ch4,area=panel-3,device=gas-1,gateway=gw-1,position=face,site=demo-mine,tag=CH4-101,"
        'unit=% value=1.25,quality="good" 1700000000123456789'
    ]


def test_whole_numbers_stay_floats() -> None:
    (line,) = to_lines(_batch(_point(value=2.0)))
    assert " value=2.0,quality=" in line
    (line,) = to_lines(_batch(_point(value=20.9e-6)))
    assert " value=2.09e-05,quality=" in line


def test_tag_values_escape_comma_space_and_equals() -> None:
    point = _point(area="face=1", device="gas,1", position="return air", tag="CH4 101")
    (line,) = to_lines(_batch(point, site="north mine", gateway="gw=1"))
    assert line == (
        r"ch4,area=face\=1,device=gas\,1,gateway=gw\=1,position=return\ air,site=north\ mine,"
        r'tag=CH4\ 101,unit=% value=1.25,quality="good" 1700000000123456789'
    )


def test_measurement_escapes_comma_and_space_only() -> None:
    (line,) = to_lines(_batch(_point(kind="gas kind,x=y")))
    assert line.startswith(r"gas\ kind\,x=y,area=panel-3,")


def test_missing_value_is_omitted_and_reason_escapes_quotes_and_backslashes() -> None:
    point = _point(value=None, quality="bad", reason='timeout "unit 3" at C:\\bus')
    (line,) = to_lines(_batch(point))
    assert line == (
        "ch4,area=panel-3,device=gas-1,gateway=gw-1,position=face,site=demo-mine,tag=CH4-101,"
        'unit=% quality="bad",reason="timeout \\"unit 3\\" at C:\\\\bus" 1700000000123456789'
    )


def test_non_finite_values_are_omitted() -> None:
    lines = to_lines(_batch(_point(value=math.nan), _point(value=math.inf, tag="T2")))
    assert all(" quality=" in line and "value=" not in line for line in lines)


def test_empty_tags_are_left_out_and_newlines_never_split_a_line() -> None:
    point = _point(unit="", area="", reason="line one\nline two")
    (line,) = to_lines(_batch(point))
    assert line == (
        "ch4,device=gas-1,gateway=gw-1,position=face,site=demo-mine,tag=CH4-101 "
        'value=1.25,quality="good",reason="line one\\nline two" 1700000000123456789'
    )
    assert "\n" not in line


def test_one_line_per_point_in_batch_order() -> None:
    lines = to_lines(_batch(_point(tag="A"), _point(tag="B", kind="co"), _point(tag="C")))
    assert [line.split(" ")[0].split("tag=")[1].split(",")[0] for line in lines] == ["A", "B", "C"]
    assert lines[1].startswith("co,")
    assert to_lines(_batch()) == []


def test_a_tag_whose_series_changes_gets_its_new_tags_and_other_gateways_their_own() -> None:
    # The builder caches a series' escaped prefix by tag; a moved or re-typed sensor
    # (same tag id, other device/kind/unit/area/position) must not reuse the old one.
    builder = LineBuilder()
    first = builder.lines(_batch(_point()))
    for change in (
        {"device": "gas-2"},
        {"kind": "co"},
        {"unit": "ppm"},
        {"area": "panel-4"},
        {"position": "return"},
    ):
        fresh = LineBuilder().lines(_batch(_point(**change)))
        assert builder.lines(_batch(_point(**change))) == fresh != first
    assert builder.lines(_batch(_point(), gateway="gw-2")) == [
        first[0].replace("gateway=gw-1", "gateway=gw-2")
    ]
    assert builder.lines(_batch(_point())) == first
