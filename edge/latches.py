"""Latched rule state on the gateway's disk, so that no restart releases a cut.

A base JSON file (the whole state, replaced atomically: temporary file, then
``os.replace``) plus an append-only journal beside it (``<state>.journal``, one
JSON line per change of one rule). Every change of a latched condition is
appended to the journal *before* the interlock hears of the change: one short
``write`` that reaches the page cache, so SIGKILL or SIGTERM right after it
loses nothing, and whose cost does not grow with the number of rules (the
first version rewrote the whole file per change: a 5,000-tag gateway's
fail-safe start wrote 5,000 files of 5,000 entries on the event loop and
stalled polling for tens of seconds). When the journal holds more lines than
``compact_every`` or twice the number of rules, the state is written as a new
base and the journal truncated; a crash between the two replays a journal that
leads to the same state. A background thread ``fsync``s journal, base and
directory so that a power loss keeps them too. Loading reads the base and
replays the journal; a torn last line (power loss mid-write) is ignored. A
missing state means "no saved state", an unreadable or corrupt one too (logged):
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
from typing import Any, TextIO

__all__ = [
    "LatchStore",
    "command_dir",
    "main_state_path",
    "read_commands",
    "state_path_for",
    "submit_command",
]

log = logging.getLogger("safewatch.edge.latches")

STATE_VERSION = 1


def state_path_for(buffer_path: str | Path, configured: str | None = None) -> Path:
    """The state file: the site's ``state.path``, else next to the buffer database."""
    if configured:
        return Path(configured)
    buffer = Path(buffer_path)
    return buffer.with_name(f"{buffer.stem}-state.json")


def main_state_path(state_path: str | Path) -> Path:
    """Where the gateway's main process keeps the latched state of its own rules when a
    safety process owns the state file (``edge/safety_process.py``)."""
    path = Path(state_path)
    return path.with_name(f"{path.stem}-main{path.suffix}")


class LatchStore:
    """Saved conditions of latching rules, keyed by rule id."""

    def __init__(self, path: str | Path, *, compact_every: int = 4096) -> None:
        if compact_every < 1:
            raise ValueError("compact_every must be at least 1")
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.compact_every = compact_every
        self.saves = 0
        self.compactions = 0
        self.errors = 0
        self._state: dict[str, dict[str, Any]] = {}
        self._journal: TextIO | None = None
        self._journal_lines = 0
        self._io = threading.Lock()  # the fsync thread and the writers share the journal
        self._dirty = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def load(self) -> dict[str, dict[str, Any]] | None:
        """The saved rule states (base plus journal), or None when there is no usable state."""
        usable, base = self._load_base()
        if not usable:
            return None
        try:
            text = self.journal_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if base is None:
                return None  # nothing was ever saved
            text = ""
        except OSError as exc:
            log.error(
                "latched state journal %s unreadable (%s): starting fail-safe",
                self.journal_path,
                exc,
            )
            return None
        state = dict(base or {})
        lines = text.split("\n")
        lines.pop()  # "" after the last newline, or a torn line whose write never completed
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                rule_id, snapshot = entry["id"], entry["s"]
                if not isinstance(rule_id, str) or not isinstance(snapshot, dict):
                    raise ValueError("entry is not {id: str, s: object}")
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "latched state journal %s line %d is corrupt (%s): starting fail-safe",
                    self.journal_path,
                    number,
                    exc,
                )
                return None
            state[rule_id] = snapshot
        self._state = dict(state)
        self._journal_lines = len(lines)
        return state

    def _load_base(self) -> tuple[bool, dict[str, dict[str, Any]] | None]:
        """(usable, rules): (True, None) when there is no base file, (False, None) if corrupt."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return True, None
        except OSError as exc:
            log.error("latched state %s unreadable (%s): starting fail-safe", self.path, exc)
            return False, None
        try:
            doc = json.loads(text)
            rules = doc["rules"]
            if doc.get("version") != STATE_VERSION or not isinstance(rules, dict):
                raise ValueError(f"unknown layout (version {doc.get('version')!r})")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("latched state %s is corrupt (%s): starting fail-safe", self.path, exc)
            return False, None
        return True, {str(k): dict(v) for k, v in rules.items() if isinstance(v, dict)}

    def record(self, rule_id: str, snapshot: Mapping[str, Any]) -> None:
        """Persist one rule's new state (a journal line); compact now and then."""
        line = json.dumps({"id": rule_id, "s": snapshot}, sort_keys=True, separators=(",", ":"))
        try:
            with self._io:
                if self._journal is None:
                    self._journal = self.journal_path.open("a", encoding="utf-8")
                self._journal.write(line + "\n")
                self._journal.flush()
        except OSError as exc:
            # the interlock still acts; a restart without saved state starts fail-safe
            self.errors += 1
            log.error("could not save latched state to %s: %s", self.journal_path, exc)
            return
        self._state[rule_id] = dict(snapshot)
        self._journal_lines += 1
        self.saves += 1
        if self._journal_lines >= max(self.compact_every, 2 * len(self._state)):
            self.save(self._state)
        self._ensure_thread()
        self._dirty.set()

    def save(self, rules: Mapping[str, Mapping[str, Any]]) -> None:
        """Write ``rules`` as the whole state (a new base) and empty the journal."""
        data = json.dumps(
            {"version": STATE_VERSION, "saved_ns": time.time_ns(), "rules": rules},
            sort_keys=True,
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as out:
                out.write(data)
            os.replace(tmp, self.path)
            with self._io:
                if self._journal is not None:
                    self._journal.close()
                # truncate only after the base holds everything the journal said
                self._journal = self.journal_path.open("w", encoding="utf-8")
        except OSError as exc:
            self.errors += 1
            log.error("could not save latched state to %s: %s", self.path, exc)
            return
        self._state = {str(k): dict(v) for k, v in rules.items()}
        self._journal_lines = 0
        self.compactions += 1
        self._ensure_thread()
        self._dirty.set()

    def sync(self) -> None:
        """fsync the journal, the base file and their directory now.

        The journal is synced through a duplicate of its descriptor, outside the lock that
        :meth:`record` takes: a slow disk's fsync must not hold up the next cut's journal line
        (that write is on the safety path, before the interlock acts)."""
        try:
            with self._io:
                journal = self._journal
                fd = -1 if journal is None or journal.closed else os.dup(journal.fileno())
            if fd >= 0:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for target in (self.path, self.path.parent):
                try:
                    fd = os.open(target, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.errors += 1
            log.error("could not fsync latched state %s: %s", self.path, exc)

    def close(self) -> None:
        self._stop = True
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._journal_lines:
            self.save(self._state)  # leave a compact base behind
        self.sync()
        with self._io:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

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
