"""The latched-state store: a journal line per change, compaction, torn and corrupt files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edge.latches import LatchStore


def _state(condition: str) -> dict[str, object]:
    return {"condition": condition, "latched": condition == "cut"}


def test_changes_survive_a_restart_without_close(tmp_path: Path) -> None:
    store = LatchStore(tmp_path / "state.json")
    store.record("CH4_T1", _state("cut"))
    store.record("CH4_T2", _state("alarm"))
    store.record("CH4_T1", _state("normal"))
    # no close(): as after SIGKILL, only what reached the OS is there
    assert LatchStore(tmp_path / "state.json").load() == {
        "CH4_T1": _state("normal"),
        "CH4_T2": _state("alarm"),
    }


def test_a_change_costs_one_line_whatever_the_number_of_rules(tmp_path: Path) -> None:
    store = LatchStore(tmp_path / "state.json", compact_every=100_000)
    for i in range(2000):
        store.record(f"T{i}", _state("cut"))
    journal = store.journal_path.read_text(encoding="utf-8").splitlines()
    assert len(journal) == 2000
    assert all(len(line) < 100 for line in journal)  # one rule per line, never the whole state
    assert not store.path.exists()  # no full rewrite yet: under twice the rules


def test_compaction_writes_a_base_and_empties_the_journal(tmp_path: Path) -> None:
    store = LatchStore(tmp_path / "state.json", compact_every=10)
    for i in range(25):
        store.record("CH4_T1", _state("cut" if i % 2 else "normal"))
    assert store.compactions == 2
    assert len(store.journal_path.read_text(encoding="utf-8").splitlines()) == 5
    assert LatchStore(tmp_path / "state.json").load() == {"CH4_T1": _state("normal")}
    store.close()
    assert store.journal_path.read_text(encoding="utf-8") == ""
    assert LatchStore(tmp_path / "state.json").load() == {"CH4_T1": _state("normal")}


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    store = LatchStore(tmp_path / "state.json")
    store.record("CH4_T1", _state("cut"))
    with store.journal_path.open("a", encoding="utf-8") as out:
        out.write('{"id":"CH4_T1","s":{"condi')  # power lost mid-write
    assert LatchStore(tmp_path / "state.json").load() == {"CH4_T1": _state("cut")}


def test_a_corrupt_journal_line_means_no_saved_state(tmp_path: Path) -> None:
    store = LatchStore(tmp_path / "state.json")
    store.record("CH4_T1", _state("cut"))
    with store.journal_path.open("a", encoding="utf-8") as out:
        out.write("garbage\n")
    store.record("CH4_T2", _state("normal"))
    assert LatchStore(tmp_path / "state.json").load() is None  # fail-safe start


def test_a_corrupt_base_means_no_saved_state(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{ not json", encoding="utf-8")
    store = LatchStore(tmp_path / "state.json")
    store.record("CH4_T1", _state("cut"))
    assert LatchStore(tmp_path / "state.json").load() is None


def test_nothing_saved_is_none(tmp_path: Path) -> None:
    assert LatchStore(tmp_path / "state.json").load() is None


def test_a_slow_fsync_does_not_hold_up_the_next_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk whose fsync takes 1 s (fault injected into os.fsync): a cut's journal line, on
    the safety path, is written meanwhile instead of waiting for the sync."""
    store = LatchStore(tmp_path / "state.json")
    store.record("CH4_T1", _state("alarm"))
    syncing = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        syncing.set()
        time.sleep(1.0)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    syncer = threading.Thread(target=store.sync)
    syncer.start()
    assert syncing.wait(5), "the sync never started"
    t0 = time.monotonic()
    store.record("CH4_T1", _state("cut"))
    took = time.monotonic() - t0
    syncer.join(10)
    assert took < 0.5, f"the change waited {took:.3f} s for the fsync"
    assert LatchStore(tmp_path / "state.json").load() == {"CH4_T1": _state("cut")}
    assert store.errors == 0
    store.close()
