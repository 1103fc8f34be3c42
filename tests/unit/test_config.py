"""Site and profile loading: valid files load; each broken one names file, line, device, field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.config import ConfigError, ConfigIssue, Direction, load_profiles, load_site
from safewatch.cli import app

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "firmware_configs" / "sites" / "demo-mine.yaml"
DEMO_TEXT = DEMO.read_text(encoding="utf-8")


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence - 1]


def _broken(tmp_path: Path, old: str, new: str, count: int = 1) -> tuple[Path, str]:
    assert old in DEMO_TEXT, old
    text = DEMO_TEXT.replace(old, new, count)
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text


def _issues(path: Path) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    return caught.value.issues


def test_demo_site_loads_with_profiles_resolved() -> None:
    site = load_site(DEMO)
    assert site.config.gateway.id == "gw-1201"
    assert set(site.profiles) == {"ch4", "co", "o2"}
    by_tag = {t.name: site.thresholds_of(t) for _, t in site.tags()}
    assert (by_tag["CH4_1201_T1"].alarm, by_tag["CH4_1201_T1"].cut) == (1.0, 1.5)
    assert by_tag["CH4_1201_T1"].restore == 1.0
    assert by_tag["CH4_1201_T2"].cut == 1.0  # return roadway cuts at 1.0
    assert by_tag["O2_1201"].direction is Direction.LOW
    assert by_tag["CO_1201"].cut is None


def test_every_shipped_profile_cites_its_source() -> None:
    for profile in load_profiles().values():
        for position, th in profile.thresholds.items():
            assert th.source, f"{profile.id}.{position} has no source"


def test_unknown_profile_names_line_device_and_field(tmp_path: Path) -> None:
    path, text = _broken(tmp_path, "profile: co\n", "profile: cox\n")
    (issue,) = _issues(path)
    assert issue.file == str(path)
    assert issue.line == _line_of(text, "profile: cox")
    assert issue.device == "env-1201"
    assert issue.field == "devices.2.tags.0.profile"
    assert "unknown profile 'cox'" in issue.message and "ch4_ir, co, " in issue.message


def test_wrong_type_names_its_line(tmp_path: Path) -> None:
    path, text = _broken(tmp_path, "poll_ms: 1000", "poll_ms: fast")
    (issue,) = _issues(path)
    assert (issue.line, issue.device, issue.field) == (
        _line_of(text, "poll_ms: fast"),
        "env-1201",
        "devices.2.poll_ms",
    )
    assert "integer" in issue.message


def test_overlapping_registers_are_refused(tmp_path: Path) -> None:
    # O2 at input register 0 collides with CO at input register 0
    path, text = _broken(tmp_path, "address: 1\n", "address: 0\n")
    (issue,) = _issues(path)
    assert issue.field == "devices.2.tags.1.address"
    assert issue.line == _line_of(text, "address: 0", occurrence=4)
    assert "overlaps tag 'CO_1201'" in issue.message


def test_float32_overlapping_next_register(tmp_path: Path) -> None:
    text = DEMO_TEXT.replace(
        "        actuators: [power-1201]\n  - id: ch4-1201-t2",
        "        actuators: [power-1201]\n"
        "      - name: CH4_EXTRA\n        profile: ch4\n        address: 1\n"
        "        location: {area: a, position: face}\n  - id: ch4-1201-t2",
    )
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    (issue,) = _issues(path)
    assert issue.device == "ch4-1201-t1"
    assert "holding register 1 overlaps tag 'CH4_1201_T1'" in issue.message


def test_missing_field_points_at_the_object(tmp_path: Path) -> None:
    path, text = _broken(tmp_path, "    bus: face-net\n    unit_id: 3\n", "    unit_id: 3\n")
    (issue,) = _issues(path)
    assert issue.field == "devices.2.bus"
    assert issue.device == "env-1201"
    assert issue.line == _line_of(text, "- id: env-1201")
    assert "Field required" in issue.message


def test_unknown_references_and_positions_are_all_reported(tmp_path: Path) -> None:
    text = (
        DEMO_TEXT.replace("bus: face-net\n    unit_id: 2", "bus: nowhere\n    unit_id: 2")
        .replace("actuators: [power-1201]", "actuators: [power-9999]", 1)
        .replace("position: return}\n        actuators", "position: gob}\n        actuators")
        .replace("device: breaker-1201", "device: breaker-x")
    )
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    messages = {(i.field, i.message.split(";")[0]) for i in _issues(path)}
    assert messages == {
        ("devices.0.tags.0.actuators.0", "unknown actuator 'power-9999'"),
        ("devices.1.bus", "unknown bus 'nowhere'"),
        (
            "devices.1.tags.0.location.position",
            "profile 'ch4' has no thresholds for position 'gob'",
        ),
        ("actuators.0.device", "unknown device 'breaker-x'"),
    }


def test_inconsistent_thresholds_are_refused(tmp_path: Path) -> None:
    path, _ = _broken(
        tmp_path,
        'location: {area: "1201 face", roadway: "1201 haulage", position: face}\n        actuators',
        'location: {area: "1201 face", roadway: "1201 haulage", position: face}\n'
        "        thresholds: {alarm: 1.0, cut: 0.8, restore: 0.5}\n        actuators",
    )
    (issue,) = _issues(path)
    assert issue.field == "devices.0.tags.0.thresholds"
    assert "alarm 1.0 must be <= cut 0.8" in issue.message


def test_duplicate_unit_on_a_bus(tmp_path: Path) -> None:
    path, _ = _broken(tmp_path, "unit_id: 2", "unit_id: 1")
    (issue,) = _issues(path)
    assert issue.field == "devices.1.unit_id"
    assert "already device 'ch4-1201-t1'" in issue.message


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [
        ("site: {id: x\ngateway: [\n", 2, "(syntax)"),
        ("- just\n- a list\n", 1, "(document)"),
        ("site:\n  id: x\n\tgateway: y\n", 3, "(syntax)"),
    ],
)
def test_malformed_yaml(tmp_path: Path, content: str, line: int, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    (issue,) = _issues(path)
    assert (issue.line, issue.field) == (line, field)


def test_missing_file(tmp_path: Path) -> None:
    (issue,) = _issues(tmp_path / "absent.yaml")
    assert "cannot read" in issue.message


def test_cli_validate_prints_every_error_and_fails(tmp_path: Path) -> None:
    path, text = _broken(tmp_path, "profile: co\n", "profile: cox\n")
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 1
    line = _line_of(text, "profile: cox")
    assert f"{path}:{line}: device env-1201 devices.2.tags.0.profile: unknown profile" in (
        result.output
    )


def test_cli_validate_summarises_a_good_file() -> None:
    result = CliRunner().invoke(app, ["config", "validate", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert "OK - site demo-mine, gateway gw-1201, 1 bus(es), 4 device(s), 4 tag(s)" in result.output
