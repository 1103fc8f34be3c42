"""The edge gateway: polling, rules, interlocks, alarms and the durable uplink.

Import from the modules (``edge.gateway``, ``edge.rules``...); this package
itself only names the main entry points, loaded lazily so that
``import edge.config`` stays light for the simulators and the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.gateway import Gateway
    from edge.rules import Level, ThresholdMachine, Transition

__all__ = ["Gateway", "Level", "ThresholdMachine", "Transition"]


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from edge.gateway import Gateway

        return Gateway
    if name in ("Level", "ThresholdMachine", "Transition"):
        from edge import rules

        return getattr(rules, name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
