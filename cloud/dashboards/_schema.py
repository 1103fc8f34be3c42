"""Validate dashboard JSON against the schema shipped next to this module.

``dashboard.schema.json`` is the subset of Grafana's dashboard JSON model the
walls use, stricter where a mistake would make a wall silently wrong. Beyond
the schema, :func:`validate_dashboard` checks what JSON Schema cannot say:
panel ids unique, panels inside the 24-column grid, refIds unique per panel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["SCHEMA_PATH", "DashboardSchemaError", "validate_dashboard"]

SCHEMA_PATH = Path(__file__).with_name("dashboard.schema.json")


class DashboardSchemaError(ValueError):
    """A dashboard does not match the schema; the message names uid and JSON path."""


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_dashboard(board: Mapping[str, Any]) -> None:
    uid = board.get("uid", "?")
    problems = [
        f"{uid}: {'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in _validator().iter_errors(board)
    ]
    ids: set[int] = set()
    for panel in board.get("panels", []):
        pid = panel.get("id")
        if pid in ids:
            problems.append(f"{uid}: panel id {pid} used twice")
        ids.add(pid)
        if panel.get("type") != "row":
            refs = [t.get("refId") for t in panel.get("targets", [])]
            if len(refs) != len(set(refs)):
                problems.append(f"{uid}: panel {pid} repeats a refId: {refs}")
        pos = panel.get("gridPos", {})
        if pos.get("x", 0) + pos.get("w", 0) > 24:
            problems.append(f"{uid}: panel {pid} runs past the 24-column grid: {pos}")
    if problems:
        raise DashboardSchemaError("; ".join(problems))
