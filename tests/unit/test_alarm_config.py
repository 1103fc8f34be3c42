"""Per-alarm handling in YAML: deadband and delays (thresholds), chatter detection (tag,
profile, site) and the flood limit; bad values are refused naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.alarm_manager import AlarmStore, ChatterPolicy
from edge.config import (
    ConfigError,
    ConfigIssue,
    SensorProfile,
    load_profile,
    load_profiles,
    load_site,
)
from tests.unit.test_config import DEMO_TEXT, _line_of

CO_TAG_LOCATION = 'location: {area: "1201 face", roadway: "1201 haulage", position: face}\n'
PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs" / "sensors"


def _site(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _with_tag_lines(lines: str) -> str:
    """The demo site with ``lines`` added to its first tag (CH4_1201_T1)."""
    old = CO_TAG_LOCATION + "        actuators"
    assert old in DEMO_TEXT
    return DEMO_TEXT.replace(old, CO_TAG_LOCATION + lines + "        actuators", 1)


def _issues(path: Path) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    return caught.value.issues


def test_chatter_comes_from_the_tag_then_the_profile_then_the_site(tmp_path: Path) -> None:
    text = _with_tag_lines("        chatter: {transitions: 3, window_s: 30, hold_s: 120}\n")
    text += "alarms:\n  flood_per_minute: 20\n  chatter: {transitions: 8, window_s: 120}\n"
    profiles = load_profiles()
    co = profiles["co"].model_dump()
    profiles["co"] = SensorProfile.model_validate(
        {**co, "chatter": {"transitions": 4, "window_s": 45}}
    )
    site = load_site(_site(tmp_path, text), profiles)
    assert site.config.alarms.flood_per_minute == 20
    policy = ChatterPolicy.from_site(site)
    assert policy.limits("CH4_1201_T1|CH4_1201_T1") == (3, 30.0, 120.0)  # the tag's own
    assert policy.limits("CO_1201|CO_1201") == (4, 45.0, 600.0)  # its profile's
    assert policy.limits("O2_1201|O2_1201") == (8, 120.0, 600.0)  # the site's


def test_per_tag_chatter_drives_suppression(tmp_path: Path) -> None:
    text = _with_tag_lines("        chatter: {transitions: 2, window_s: 30}\n")
    site = load_site(_site(tmp_path, text))
    store = AlarmStore(tmp_path / "a.sqlite", chatter=ChatterPolicy.from_site(site))
    now = 1_800_000_000 * 10**9
    states = {}
    for tag in ("CH4_1201_T1", "CH4_1201_T2"):  # the second keeps the default 5 in 60 s
        for i in range(2):
            t = now + i * 10**9
            store.on_condition(tag, tag, "alarm", kind="ch4", fail_safe=True, reason="", ts_ns=t)
            rec = store.on_condition(
                tag, tag, "normal", kind="ch4", fail_safe=True, reason="", ts_ns=t + 1
            )
        states[tag] = rec.state
    assert states == {"CH4_1201_T1": "suppressed", "CH4_1201_T2": "returned_unacknowledged"}
    store.close()


@pytest.mark.parametrize(
    ("lines", "field", "message"),
    [
        (
            "        chatter: {transitions: 1}\n",
            "devices.0.tags.0.chatter.transitions",
            "Input should be greater than or equal to 2",
        ),
        (
            "        chatter: {transitions: 3, window_s: 0}\n",
            "devices.0.tags.0.chatter.window_s",
            "Input should be greater than 0",
        ),
        (
            "        chatter: {transitions: 3, every: 5}\n",
            "devices.0.tags.0.chatter.every",
            "Extra inputs are not permitted",
        ),
        (
            "        thresholds: {alarm: 1.0, cut: 1.5, restore: 1.0, deadband: -0.1}\n",
            "devices.0.tags.0.thresholds.deadband",
            "Input should be greater than or equal to 0",
        ),
        (
            "        thresholds: {alarm: 1.0, cut: 1.5, restore: 1.0, alarm_on_delay_s: -5}\n",
            "devices.0.tags.0.thresholds.alarm_on_delay_s",
            "Input should be greater than or equal to 0",
        ),
        (
            "        thresholds: {alarm: 1.0, cut: 1.5, restore: 1.0, clear: 0.8, deadband: 0.1}\n",
            "devices.0.tags.0.thresholds",
            "give 'clear' or 'deadband', not both",
        ),
    ],
)
def test_bad_per_alarm_settings_name_file_line_device_and_field(
    tmp_path: Path, lines: str, field: str, message: str
) -> None:
    text = _with_tag_lines(lines)
    path = _site(tmp_path, text)
    (issue,) = _issues(path)
    assert (issue.file, issue.device, issue.field) == (str(path), "ch4-1201-t1", field)
    assert issue.line == _line_of(text, lines.strip().split(":")[0] + ":")
    assert message in issue.message


@pytest.mark.parametrize(
    ("block", "field", "message"),
    [
        (
            "alarms:\n  flood_per_minute: 0\n",
            "alarms.flood_per_minute",
            "greater than or equal to 1",
        ),
        ("alarms:\n  flood_clear_s: -1\n", "alarms.flood_clear_s", "greater than 0"),
        ("alarms:\n  flood: 5\n", "alarms.flood", "Extra inputs are not permitted"),
        (
            "alarms:\n  chatter: {hold_s: 9999999}\n",
            "alarms.chatter.hold_s",
            "less than or equal to 604800",
        ),
    ],
)
def test_bad_site_alarm_settings_name_the_field(
    tmp_path: Path, block: str, field: str, message: str
) -> None:
    path = _site(tmp_path, DEMO_TEXT + block)
    (issue,) = _issues(path)
    assert (issue.file, issue.field) == (str(path), field)
    assert issue.line is not None and issue.line > len(DEMO_TEXT.splitlines())
    assert message in issue.message


def test_bad_chatter_in_a_profile_names_the_profile_file(tmp_path: Path) -> None:
    text = (PROFILES / "co.yaml").read_text(encoding="utf-8")
    path = tmp_path / "co.yaml"
    path.write_text(text + "chatter: {transitions: 3, window_s: -1}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    (issue,) = caught.value.issues
    assert (issue.file, issue.field) == (str(path), "chatter.window_s")
    assert issue.line == len(text.splitlines()) + 1
    assert "greater than 0" in issue.message


CONSOLES = """alarms:
  consoles:
    - id: panel-1201
      areas: ["1201 face", "1201 return roadway"]
    - id: panel-1201
      areas: ["1201 haulage roadway"]
    - id: main
      areas: ["1201 face", "Main roadway"]
"""


def test_operator_consoles_are_refused_naming_the_field_and_line(tmp_path: Path) -> None:
    path = _site(tmp_path, DEMO_TEXT + CONSOLES)
    issues = {(i.field, i.line): i.message for i in _issues(path)}
    text = path.read_text(encoding="utf-8")
    assert issues[("alarms.consoles.1.id", _line_of(text, "- id: panel-1201", 2))] == (
        "duplicate console 'panel-1201'"
    )
    assert issues[("alarms.consoles.2.areas.0", _line_of(text, 'areas: ["1201 face", "Main'))] == (
        "area '1201 face' is already answered by console 'panel-1201': an area has one "
        "operator console"
    )
    assert not any("no operator console" in m for m in issues.values()), issues


def test_every_tag_area_needs_a_console_once_consoles_are_set(tmp_path: Path) -> None:
    text = DEMO_TEXT + 'alarms:\n  consoles:\n    - {id: roads, areas: ["Main roadway"]}\n'
    issues = _issues(_site(tmp_path, text))
    unanswered = [i for i in issues if "answered by no operator console" in i.message]
    assert len(unanswered) == 4 and all(i.field.endswith(".location.area") for i in unanswered)
    assert [i.line for i in unanswered] == [34, 46, 59, 66], "the tags' location lines"
    assert all(i.device for i in unanswered), "the device is named"
    assert unanswered[0].message == (
        "area '1201 face' of tag CH4_1201_T1 is answered by no operator console "
        "(alarms.consoles: roads); add it to one"
    )


def test_without_consoles_the_gateway_is_one_console(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, DEMO_TEXT))
    assert site.config.alarms.consoles == ()
    assert {site.console_of(t.location.area) for _, t in site.tags()} == {site.config.gateway.id}


def test_notification_urls_apprise_cannot_use_are_refused_without_showing_them(
    tmp_path: Path,
) -> None:
    text = DEMO_TEXT + (
        "notifications:\n"
        "  - name: control\n"
        '    urls: ["wecombot://duty-key-1", "smsgw://secret-token@10.0.0.9/13800000000"]\n'
        '    escalate_to: ["dingtalk://not a token!/"]\n'
    )
    issues = {i.field: i for i in _issues(_site(tmp_path, text))}
    assert set(issues) == {"notifications.0.urls.1", "notifications.0.escalate_to.0"}
    assert issues["notifications.0.urls.1"].message == (
        "apprise cannot send to this smsgw:// URL (unknown service, or a token, host or "
        "option it refuses)"
    )
    assert issues["notifications.0.urls.1"].line == _line_of(text, 'urls: ["wecombot')
    assert "secret-token" not in str(issues["notifications.0.urls.1"])
    assert "dingtalk://" in issues["notifications.0.escalate_to.0"].message
