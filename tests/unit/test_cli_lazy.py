"""The CLI imports a subcommand only when it runs: `edge run` never loads the cloud."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from safewatch.cli import _SUBCOMMANDS as SUBCOMMANDS
from safewatch.cli import _load as load_subcommand
from safewatch.cli import app

PROBE = """
import sys
from safewatch.cli import app
try:
    app(["edge", "run", "--help"])
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"cloud", "simulators", "models",
               "bench", "fastapi", "sqlalchemy", "asyncua", "onnxruntime", "skl2onnx"})
print("HEAVY", heavy)
"""


def test_edge_run_does_not_import_cloud_simulators_or_models() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("HEAVY"))
    assert line == "HEAVY []", line


def test_every_subcommand_loads_and_keeps_its_help() -> None:
    for name, (_, _, help_text) in SUBCOMMANDS.items():
        command = load_subcommand(name)
        assert command.name == name
        assert command.help == help_text


def test_root_help_lists_every_subcommand_and_unknown_is_a_usage_error() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_every_sub_app_is_a_group_with_its_commands() -> None:
    """`safewatch config validate` stays two words even when an app has one command."""
    runner = CliRunner()
    for name in SUBCOMMANDS:
        command = load_subcommand(name)
        subs = getattr(command, "commands", None)
        if name == "demo":
            assert subs is None
            continue
        assert subs, name
        for sub in subs:
            result = runner.invoke(app, [name, sub, "--help"])
            assert result.exit_code == 0, (name, sub, result.output[-500:])
