"""The one ``safewatch`` command: edge, cloud, sim, config, models, dashboards, bench, demo.

Subcommands are imported only when named: ``safewatch edge run`` must not load the
cloud's web, database and auth stacks (about 50 MB of a gateway's RSS, measured
with ``bench gateway-memory``). ``safewatch --help`` still lists every one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer carries its own copy of click
    from typer._click.core import Command, Context

# name -> (module, attribute, help); the attribute is a Typer app or a plain function
_SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("safewatch.cmd_demo", "demo", "Start simulator, gateway and cloud on this machine."),
    "edge": ("safewatch.cmd_edge", "app", "Run an edge gateway."),
    "cloud": ("safewatch.cmd_cloud", "app", "Run the cloud ingest and API."),
    "sim": ("safewatch.cmd_sim", "app", "Simulate a site's devices."),
    "config": ("safewatch.cmd_config", "app", "Validate and show configuration."),
    "models": ("safewatch.cmd_models", "app", "Train and evaluate the ONNX models."),
    "dashboards": ("safewatch.cmd_dashboards", "app", "Grafana walls: export or push."),
    "certs": ("safewatch.cmd_certs", "app", "Make certificates (OPC UA security)."),
    "bench": ("safewatch.cmd_bench", "app", "Run a benchmark; the last output line is JSON."),
    "users": ("safewatch.cmd_users", "users_app", "API users: add, list, disable, passwd, role."),
    "tokens": (
        "safewatch.cmd_users",
        "tokens_app",
        "API tokens for machines: create, list, revoke.",
    ),
    "keys": ("safewatch.cmd_users", "keys_app", "JWT signing keys: list, rotate, retire."),
    "broker": ("safewatch.cmd_broker", "app", "MQTT broker accounts, ACL and TLS listener."),
    "audit": ("safewatch.cmd_audit", "app", "The hash-chained audit trail: verify, head, show."),
    "alarms": ("safewatch.cmd_alarms", "app", "Gateway alarms: list, ack, shelve, oos, kpi."),
}


def _load(name: str) -> Command:
    module, attr, help_text = _SUBCOMMANDS[name]
    target: Any = getattr(importlib.import_module(module), attr)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name, help=help_text)
    else:  # a plain function: one command
        holder.command(name, help=help_text)(target)
    return typer.main.get_group(holder).commands[name]


class _LazyGroup(TyperGroup):
    """Imports a subcommand's module when the subcommand is looked up."""

    def list_commands(self, ctx: Context) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in _SUBCOMMANDS if name not in own)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _SUBCOMMANDS:
            command = _load(cmd_name)
            self.add_command(command, cmd_name)
        return command


app = typer.Typer(
    name="safewatch",
    help="SafeWatch: edge-to-cloud safety monitoring for mines and process plants.",
    no_args_is_help=True,
    add_completion=False,
    cls=_LazyGroup,
)


@app.callback()
def _root() -> None:
    """SafeWatch: edge-to-cloud safety monitoring for mines and process plants."""


if __name__ == "__main__":
    app()
