"""No site file can break the loader: each hostile file is one clean, one-line error.

Every case is checked three ways: ``load_site`` raises :class:`ConfigError` naming the
file (and the line and field where there is one), ``safewatch config validate`` and
``safewatch edge run`` both exit 1 with that one line and no traceback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.config import ConfigError, ConfigIssue, load_site
from safewatch.cli import app

REPO = Path(__file__).resolve().parents[2]
DEMO_TEXT = (REPO / "firmware_configs" / "sites" / "demo-mine.yaml").read_text(encoding="utf-8")


def _site(tmp_path: Path, old: str | None = None, new: str = "", text: str | None = None) -> Path:
    body = DEMO_TEXT if text is None else text
    if old is not None:
        assert old in body, old
        body = body.replace(old, new, 1)
    # keep every case's buffer inside tmp_path (the demo's var/ is relative to the cwd)
    body = body.replace("path: var/gw-1201-buffer.db", f"path: {tmp_path / 'buf' / 'b.db'}")
    path = tmp_path / "site.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def _issues(path: Path) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    return caught.value.issues


def _refused_by_both_commands(path: Path, needle: str) -> None:
    runner = CliRunner()
    for args in (["config", "validate", str(path)], ["edge", "run", "--config", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        lines = [line for line in result.output.splitlines() if needle in line]
        assert len(lines) == 1, (args, result.output)
        assert str(path) in lines[0] and "Traceback" not in result.output


def _line_of(path: Path, needle: str) -> int:
    text = path.read_text(encoding="utf-8").splitlines()
    return next(i + 1 for i, line in enumerate(text) if needle in line)


def test_alias_bomb_is_refused_quickly_without_expanding(tmp_path: Path) -> None:
    rows = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        rows.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    path = _site(tmp_path, text=DEMO_TEXT + "\n".join(rows) + "\n")
    started = time.monotonic()
    (issue,) = _issues(path)
    assert time.monotonic() - started < 5
    assert issue.file == str(path) and "alias" in issue.message
    _refused_by_both_commands(path, "alias")


def test_deep_nesting_is_refused_not_a_recursion_traceback(tmp_path: Path) -> None:
    for depth in (100, 20_000):
        path = _site(tmp_path, text=DEMO_TEXT + "deep: " + "[" * depth + "]" * depth + "\n")
        (issue,) = _issues(path)
        assert "nested" in issue.message, issue
        _refused_by_both_commands(path, "nested")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    os.mkfifo(path)  # opening it for reading would block forever: no writer
    (issue,) = _issues(path)
    assert "not a regular file" in issue.message and issue.file == str(path)
    _refused_by_both_commands(path, "not a regular file")


def test_device_path_and_directory_are_refused(tmp_path: Path) -> None:
    (issue,) = _issues(Path("/dev/zero"))  # would read forever
    assert "not a regular file" in issue.message
    (issue,) = _issues(tmp_path)
    assert "directory" in issue.message


def test_buffer_path_that_is_a_directory_fails_validate_and_run(tmp_path: Path) -> None:
    folder = tmp_path / "bufdir"
    folder.mkdir()
    path = _site(tmp_path, text=DEMO_TEXT.replace("var/gw-1201-buffer.db", str(folder)))
    (issue,) = _issues(path)
    assert issue.field == "buffer.path" and issue.line == _line_of(path, str(folder))
    assert "is a directory" in issue.message
    _refused_by_both_commands(path, "is a directory")
    # an override on the command line is checked too
    ok = _site(tmp_path)
    result = CliRunner().invoke(app, ["edge", "run", "--config", str(ok), "--buffer", str(folder)])
    assert result.exit_code == 1 and "is a directory" in result.output


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("timeout_ms: 500", "timeout_ms: .nan", "buses.0.timeout_ms"),
        ("scale: 0.01 ", "scale: .inf ", "devices.1.tags.0.scale"),
        ("scale: 0.1\n", "scale: -.inf\n", "devices.2.tags.0.scale"),
        (
            'location: {area: "1201 face", roadway: "1201 haulage", position: face}\n'
            "        actuators",
            'location: {area: "1201 face", roadway: "1201 haulage", position: face}\n'
            "        thresholds: {alarm: .nan}\n        actuators",
            "devices.0.tags.0.thresholds.alarm",
        ),
    ],
)
def test_nan_and_infinity_are_refused_wherever_a_number_goes(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    path = _site(tmp_path, old, new)
    issues = _issues(path)
    assert field in [i.field for i in issues], issues
    issue = next(i for i in issues if i.field == field)
    assert issue.line == _line_of(path, ".nan" if "nan" in new else ".inf")
    assert "finite" in issue.message
    _refused_by_both_commands(path, field)


def test_stale_after_shorter_than_poll_is_refused(tmp_path: Path) -> None:
    path = _site(tmp_path, "    poll_ms: 1000\n", "    poll_ms: 1000\n    stale_after_ms: 800\n")
    (issue,) = _issues(path)
    assert (issue.field, issue.device) == ("devices.2", "env-1201")
    assert "shorter than poll_ms" in issue.message
    _refused_by_both_commands(path, "shorter than poll_ms")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        # the bus timeout alone is longer than three poll periods
        ("timeout_ms: 500", "timeout_ms: 2000", "devices.0.poll_ms"),
        # an explicit staleness shorter than one period plus one timeout
        ("    poll_ms: 1000\n", "    poll_ms: 1000\n    stale_after_ms: 1200\n",
         "devices.2.stale_after_ms"),
    ],
)  # fmt: skip
def test_staleness_that_cannot_fit_poll_and_timeout_is_refused(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    path = _site(tmp_path, old, new)
    issues = _issues(path)
    assert field in [i.field for i in issues], issues
    assert all("must be at least poll_ms" in i.message for i in issues)
    _refused_by_both_commands(path, field)


def test_safety_sensor_polled_slower_than_10_s_is_refused(tmp_path: Path) -> None:
    path = _site(tmp_path, "    poll_ms: 1000\n", "    poll_ms: 12000\n")
    (issue,) = _issues(path)
    assert issue.field == "devices.2.poll_ms" and "AQ 6201" in issue.message


def test_two_buses_on_one_endpoint_are_refused(tmp_path: Path) -> None:
    path = _site(
        tmp_path,
        "devices:\n",
        "  - {id: twin, type: modbus_rtu_over_tcp, host: 127.0.0.1, port: 5020}\ndevices:\n",
    )
    (issue,) = _issues(path)
    assert issue.field == "buses.1.port" and "already bus 'face-net'" in issue.message


def test_rtu_bus_settings_are_validated(tmp_path: Path) -> None:
    rtu = "type: modbus_rtu\n    port: /dev/ttyUSB0\n    baudrate: 9601\n    parity: X\n"
    path = _site(tmp_path, "type: modbus_tcp\n    host: 127.0.0.1\n    port: 5020\n", rtu)
    fields = {i.field: i.message for i in _issues(path)}
    assert set(fields) == {"buses.0.parity", "buses.0.baudrate"}, fields
    assert "baudrate 9601 is not one of" in fields["buses.0.baudrate"]


def test_profiles_directory_option_for_run_and_sim(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("ch4", "co"):  # no o2 profile: the demo's O2 tag cannot resolve
        src = REPO / "firmware_configs" / "sensors" / f"{name}.yaml"
        (profiles / f"{name}.yaml").write_text(src.read_text(encoding="utf-8"))
    path = _site(tmp_path)
    runner = CliRunner()
    run: Callable[[list[str]], str] = lambda args: runner.invoke(app, args).output  # noqa: E731
    for args in (
        ["edge", "run", "--config", str(path), "--profiles", str(profiles)],
        ["sim", "run", "--config", str(path), "--profiles", str(profiles)],
        ["config", "validate", str(path), "--profiles", str(profiles)],
    ):
        out = run(args)
        assert "unknown profile 'o2'; known: ch4, co" in out, (args, out)


def _big_site(path: Path, devices: int, tags: int) -> None:
    out = ["site: {id: big}", "gateway: {id: gw-big}", f"buffer: {{path: {path.parent / 'b.db'}}}"]
    out.append("buses:")
    out += [
        f"  - {{id: bus{d}, type: modbus_tcp, host: 127.0.0.1, port: {20000 + d}}}"
        for d in range(devices)
    ]
    out.append("devices:")
    for d in range(devices):
        out += [f"  - id: dev{d}", f"    bus: bus{d}", "    tags:"]
        for t in range(tags):
            out += [
                f"      - {{name: T{d}_{t}, profile: ch4, address: {2 * t}, type: float32,",
                "         location: {area: a1, position: face}}",
            ]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def test_a_10000_tag_site_loads_in_seconds_and_errors_keep_their_line(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    _big_site(path, 100, 100)
    started = time.process_time()
    site = load_site(path)
    cpu_s = time.process_time() - started
    assert len(site.tags()) == 10_000
    assert cpu_s < 10, cpu_s  # was 26 s with the round-trip loader; about 2 s now
    text = path.read_text(encoding="utf-8").replace(
        "T98_99, profile: ch4, address: 198", "T98_99, profile: ch4, address: x", 1
    )
    path.write_text(text, encoding="utf-8")
    (issue,) = _issues(path)
    assert issue.field == "devices.98.tags.99.address" and issue.device == "dev98"
    assert issue.line == _line_of(path, "address: x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", 'duplicate key "a"'),
        ("a: 1\n---\nb: 2\n", "more than one YAML document"),
        ("a: *nowhere\n", "alias"),
        ("a: !!python/object:os.system x\n", "unsupported YAML tag"),
    ],
)
def test_yaml_that_is_refused_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("site: {id: s}\n" + text, encoding="utf-8")
    (issue,) = _issues(path)
    assert message in issue.message and issue.line is not None and issue.line >= 2, issue
