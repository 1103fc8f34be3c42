"""Latched rule state on the gateway's disk, so that no restart releases a cut.

One small JSON file, replaced atomically (write a temporary file, ``os.replace``)
on every change of a latched condition, *before* the interlock hears of the
change. The replace happens on the safety path (tens of microseconds: the data
reaches the page cache, so SIGKILL or SIGTERM right after it loses nothing);
a background thread then ``fsync``s the file and its directory so that a
power loss keeps it too (ext4 also flushes a file replaced by rename before
committing the rename). A missing or unreadable file means "no saved state":
fail-safe rules then judge their first sample as if they had been cut.

The same directory holds engineer commands for the running gateway (reset an
over-range latch, declare a calibration, run a lockout test): the CLI drops a
JSON file into ``<state>.commands/`` and the gateway picks it up within a
second, so the CLI needs no network port on the gateway.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LatchStore", "command_dir", "read_commands", "state_path_for", "submit_command"]

log = logging.getLogger("safewatch.edge.latches")

STATE_VERSION = 1


def state_path_for(buffer_path: str | Path, configured: str | None = None) -> Path:
    """The state file: the site's ``state.path``, else next to the buffer database."""
    if configured:
        return Path(configured)
    buffer = Path(buffer_path)
    return buffer.with_name(f"{buffer.stem}-state.json")


class LatchStore:
    """Saved conditions of latching rules, keyed by rule id."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.saves = 0
        self.errors = 0
        self._dirty = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def load(self) -> dict[str, dict[str, Any]] | None:
        """The saved rule states, or None when there is no usable saved state."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("latched state %s unreadable (%s): starting fail-safe", self.path, exc)
            return None
        try:
            doc = json.loads(text)
            rules = doc["rules"]
            if doc.get("version") != STATE_VERSION or not isinstance(rules, dict):
                raise ValueError(f"unknown layout (version {doc.get('version')!r})")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("latched state %s is corrupt (%s): starting fail-safe", self.path, exc)
            return None
        return {str(k): dict(v) for k, v in rules.items() if isinstance(v, dict)}

    def save(self, rules: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the saved state atomically; fsync follows in the background."""
        data = json.dumps(
            {"version": STATE_VERSION, "saved_ns": time.time_ns(), "rules": rules},
            sort_keys=True,
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as out:
                out.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            # the interlock still acts; a restart without saved state starts fail-safe
            self.errors += 1
            log.error("could not save latched state to %s: %s", self.path, exc)
            return
        self.saves += 1
        self._ensure_thread()
        self._dirty.set()

    def sync(self) -> None:
        """fsync the file and its directory now."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.errors += 1
            log.error("could not fsync latched state %s: %s", self.path, exc)

    def close(self) -> None:
        self._stop = True
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.sync()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._syncer, name="latch-fsync", daemon=True)
            self._thread.start()

    def _syncer(self) -> None:
        while not self._stop:
            self._dirty.wait()
            self._dirty.clear()
            if self._stop:
                return
            self.sync()


# -- engineer commands ---------------------------------------------------------------


def command_dir(state_path: str | Path) -> Path:
    path = Path(state_path)
    return path.with_name(path.name + ".commands")


def submit_command(state_path: str | Path, command: Mapping[str, Any]) -> Path:
    """Drop one command for the running gateway; returns the file written."""
    directory = command_dir(state_path)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(dict(command), sort_keys=True), encoding="utf-8")
    final = directory / name
    os.replace(tmp, final)
    return final


def read_commands(state_path: str | Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Pending commands in arrival order (None for a file that is not a JSON object)."""
    directory = command_dir(state_path)
    if not directory.is_dir():
        return []
    found: list[tuple[Path, dict[str, Any] | None]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found.append((path, None))
            continue
        found.append((path, doc if isinstance(doc, dict) else None))
    return found
