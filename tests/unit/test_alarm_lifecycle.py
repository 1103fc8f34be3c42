"""ISA-18.2 alarm states on the gateway: the state model, identity, restart, operator actions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from statemachine.exceptions import TransitionNotAllowed
from typer.testing import CliRunner

from edge.alarm_manager import (
    ACK,
    NORMAL,
    OOS,
    RTN_UNACK,
    SHELVED,
    STATES,
    SUPPRESSED,
    UNACK,
    AlarmActionError,
    AlarmStore,
    ChatterPolicy,
    kpis,
    priority_of,
    step,
)
from safewatch.cli import app

EVENTS = (
    "activate",
    "clear",
    "acknowledge",
    "shelve",
    "unshelve",
    "remove",
    "restore",
    "suppress",
    "unsuppress",
)

# (state, event, active after the event) -> next state; everything else is forbidden
ALLOWED: dict[tuple[str, str, bool], str] = {}
for s in (UNACK, ACK, SHELVED, OOS, SUPPRESSED):
    ALLOWED[(s, "activate", True)] = s
ALLOWED[(NORMAL, "activate", True)] = UNACK
ALLOWED[(RTN_UNACK, "activate", True)] = UNACK
ALLOWED[(UNACK, "clear", False)] = RTN_UNACK
ALLOWED[(ACK, "clear", False)] = NORMAL
for s in (SHELVED, OOS, SUPPRESSED):
    ALLOWED[(s, "clear", False)] = s
ALLOWED[(UNACK, "acknowledge", True)] = ACK
ALLOWED[(RTN_UNACK, "acknowledge", False)] = NORMAL
for s in (NORMAL, UNACK, ACK, RTN_UNACK):
    ALLOWED[(s, "shelve", s in (UNACK, ACK))] = SHELVED
    ALLOWED[(s, "suppress", s in (UNACK, ACK))] = SUPPRESSED
for s in (NORMAL, UNACK, ACK, RTN_UNACK, SHELVED, SUPPRESSED):
    for active in (False, True):
        ALLOWED[(s, "remove", active)] = OOS
for event, source in (("unshelve", SHELVED), ("restore", OOS), ("unsuppress", SUPPRESSED)):
    ALLOWED[(source, event, True)] = UNACK
    ALLOWED[(source, event, False)] = NORMAL


@pytest.mark.parametrize(("state", "event", "active"), sorted(ALLOWED))
def test_every_allowed_transition(state: str, event: str, active: bool) -> None:
    assert step(state, active, event) == ALLOWED[(state, event, active)]


FORBIDDEN = sorted(
    (state, event)
    for state, event in itertools.product(STATES, EVENTS)
    if not any((state, event, a) in ALLOWED for a in (False, True))
)


@pytest.mark.parametrize(("state", "event"), FORBIDDEN)
def test_every_forbidden_transition_is_refused(state: str, event: str) -> None:
    for active in (False, True):
        with pytest.raises(TransitionNotAllowed):
            step(state, active, event)


def test_the_forbidden_list_is_what_isa_18_2_forbids() -> None:
    assert ("normal", "acknowledge") in FORBIDDEN  # nothing to acknowledge
    assert ("acknowledged", "acknowledge") in FORBIDDEN
    assert ("normal", "clear") in FORBIDDEN
    assert ("shelved", "shelve") in FORBIDDEN
    assert ("out_of_service", "shelve") in FORBIDDEN  # must return to service first
    assert ("normal", "unshelve") in FORBIDDEN
    assert len(FORBIDDEN) + len({(s, e) for s, e, _ in ALLOWED}) == len(STATES) * len(EVENTS)


def test_priority_from_grade_and_consequence() -> None:
    assert priority_of("cut", "ch4", fail_safe=True) == "critical"
    assert priority_of("cut", "co", fail_safe=False) == "high"
    assert priority_of("alarm", "co", fail_safe=False) == "medium"
    assert priority_of("alarm", "diagnosis", fail_safe=True) == "low"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * 1e9)
        return self.now


def _store(tmp_path: Path, clock: Clock, chatter: ChatterPolicy | None = None) -> AlarmStore:
    return AlarmStore(tmp_path / "gw-alarms.sqlite", clock=clock, chatter=chatter)


def _cond(store: AlarmStore, clock: Clock, level: str, rule: str = "CH4-1", tag: str = "CH4-1"):  # type: ignore[no-untyped-def]
    return store.on_condition(
        rule, tag, level, kind="ch4", fail_safe=True, reason="test", ts_ns=clock.advance(1)
    )


def test_an_alarm_keeps_its_id_from_raise_to_clear_and_then_gets_a_new_one(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    first = _cond(store, clock, "alarm")
    assert (first.state, first.priority) == (UNACK, "high")
    cut = _cond(store, clock, "cut")
    assert cut.alarm_id == first.alarm_id and cut.state == UNACK and cut.priority == "critical"
    cleared = _cond(store, clock, "normal")
    assert cleared.alarm_id == first.alarm_id and cleared.state == RTN_UNACK
    again = _cond(store, clock, "alarm")  # re-raised before acknowledgement: same alarm
    assert again.alarm_id == first.alarm_id and again.state == UNACK
    assert store.act(first.alarm_id, "acknowledge", actor="op").state == ACK
    assert _cond(store, clock, "normal").state == NORMAL
    new = _cond(store, clock, "alarm")
    assert new.alarm_id != first.alarm_id and new.state == UNACK
    actions = [c.action for c in store.history()]
    assert actions == ["raise", "change", "clear", "raise", "acknowledge", "clear", "raise"]


def test_restart_with_alarms_in_every_state_keeps_ids_and_states(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, ChatterPolicy(transitions=3, window_s=60))
    want: dict[str, tuple[str, bool]] = {}
    for state in (UNACK, ACK, RTN_UNACK, SHELVED, OOS, SUPPRESSED, NORMAL):
        rule = f"R-{state}"
        rec = _cond(store, clock, "alarm", rule, rule)
        if state == ACK:
            store.act(rule, "acknowledge", actor="op")
        elif state == RTN_UNACK:
            _cond(store, clock, "normal", rule, rule)
        elif state == SHELVED:
            store.act(rule, "shelve", actor="op", shelve_s=3600)
        elif state == OOS:
            store.act(rule, "out_of_service", actor="op", why="sensor replaced")
        elif state == SUPPRESSED:
            for _ in range(2):  # the third raise within the window: chattering
                _cond(store, clock, "normal", rule, rule)
                _cond(store, clock, "alarm", rule, rule)
        elif state == NORMAL:
            store.act(rule, "acknowledge", actor="op")
            _cond(store, clock, "normal", rule, rule)
        got = store.get(rule)
        assert got is not None and got.state == state
        want[rule] = (rec.alarm_id, got.active)
    store.close()

    reopened = _store(tmp_path, clock, ChatterPolicy(transitions=3, window_s=60, hold_s=600))
    raises_before = sum(c.action == "raise" for c in reopened.history())
    for rule, (alarm_id, active) in want.items():
        rec = reopened.get(rule)
        assert rec is not None and rec.alarm_id == alarm_id
        assert rec.state == rule.removeprefix("R-"), f"{rule}: state lost by the restart"
        if active:  # the engine re-reports the active condition after the restart
            again = _cond(reopened, clock, "alarm", rule, rule)
            assert again.alarm_id == alarm_id, f"{rule}: re-announced as a new alarm"
            assert again.state == rec.state, f"{rule}: state changed by the restart"
            assert reopened.last_action == "change", f"{rule}: the re-report is no raise"
    assert sum(c.action == "raise" for c in reopened.history()) == raises_before
    # what was running before the restart runs on after it: the shelve expires on time,
    # the chattering alarm is released after its hold, the normal alarm raises a new one
    shelved = reopened.get(f"R-{SHELVED}")
    assert shelved is not None and shelved.shelved_until_ns is not None
    clock.now = shelved.shelved_until_ns + 1
    released = {r.key: r.state for r in reopened.expire_shelves()}
    assert released == {f"R-{SHELVED}|R-{SHELVED}": UNACK, f"R-{SUPPRESSED}|R-{SUPPRESSED}": UNACK}
    fresh = _cond(reopened, clock, "alarm", f"R-{NORMAL}", f"R-{NORMAL}")
    assert fresh.alarm_id != want[f"R-{NORMAL}"][0] and fresh.state == UNACK
    back = reopened.act(f"R-{OOS}", "return_to_service", actor="op")
    assert (back.alarm_id, back.state) == (want[f"R-{OOS}"][0], UNACK), "still active: unack"


def test_operator_actions_are_checked_recorded_and_pending_for_the_cloud(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    rec = _cond(store, clock, "cut")
    with pytest.raises(AlarmActionError, match="reason"):
        store.act(rec.alarm_id, "out_of_service", actor="op")
    with pytest.raises(AlarmActionError, match="no alarm"):
        store.act("nope", "acknowledge", actor="op")
    with pytest.raises(AlarmActionError, match="unknown alarm action"):
        store.act(rec.alarm_id, "explode", actor="op")
    with pytest.raises(AlarmActionError, match="cannot be unshelved"):
        store.act(rec.alarm_id, "unshelve", actor="op")
    with pytest.raises(AlarmActionError, match="within"):
        store.act(rec.alarm_id, "shelve", actor="op", shelve_s=-1)
    assert store.pending() == [], "refused actions leave no trace to forward"
    shelved = store.act(rec.alarm_id, "shelve", actor="ana", why="known leak", shelve_s=60)
    assert shelved.state == SHELVED and shelved.shelved_until_ns == clock.now + 60 * 10**9
    (pending,) = store.pending()
    assert (pending.action, pending.actor, pending.why, pending.state) == (
        "shelve", "ana", "known leak", SHELVED,
    )  # fmt: skip
    store.mark_forwarded([pending.id])
    assert store.pending() == []
    clock.advance(30)
    assert store.expire_shelves() == []
    clock.advance(31)
    (expired,) = store.expire_shelves()
    assert expired.state == UNACK, "an active alarm comes back unacknowledged"
    assert [c.action for c in store.pending()] == ["shelve_expired"]


def test_chattering_alarm_is_suppressed_by_design_with_one_summary(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, ChatterPolicy(transitions=5, window_s=60, hold_s=120))
    states = []
    for _ in range(20):
        states.append(_cond(store, clock, "alarm").state)
        _cond(store, clock, "normal")
    assert states[:4] == [UNACK] * 4 and set(states[4:]) == {SUPPRESSED}
    summaries = [c for c in store.pending() if c.action == "suppress"]
    assert len(summaries) == 1 and "chattering" in summaries[0].why
    clock.advance(121)
    (released,) = store.expire_shelves()
    assert released.state == NORMAL


def test_kpis_over_a_simulated_shift(tmp_path: Path) -> None:
    clock = Clock()
    start = clock.now
    store = _store(tmp_path, clock)
    for i in range(6):  # one alarm an hour, acknowledged and cleared
        clock.advance(3600)
        rule = f"R{i % 2}"
        _cond(store, clock, "alarm", rule, rule)
        store.act(rule, "acknowledge", actor="op")
        _cond(store, clock, "normal", rule, rule)
    clock.advance(1800)
    _cond(store, clock, "cut", "R9", "R9")  # standing at the end
    end = clock.advance(3600)
    figures = kpis(store.history(start, end), start, end, standing=store.alarms(), stale_s=1800)
    assert figures["alarms"] == 7
    assert figures["peak_per_10min_per_operator"] == 1
    windows = -(-(end - start) // (600 * 10**9))
    assert figures["avg_per_10min_per_operator"] == round(7 / windows, 3)
    assert figures["flood_share"] == 0
    assert figures["chattering"] == []
    assert figures["standing"] == ["R9|R9"] and figures["stale"] == ["R9|R9"]
    assert figures["top10"][0] == {"alarm": "R0|R0", "count": 3}


def test_flood_share_counts_windows_over_the_limit(tmp_path: Path) -> None:
    clock = Clock()
    start = clock.now
    store = _store(tmp_path, clock)
    for i in range(15):  # a burst of 15 different alarms in one minute
        _cond(store, clock, "alarm", f"B{i}", f"B{i}")
    end = start + 3600 * 10**9
    figures = kpis(store.history(start, end), start, end)
    assert figures["peak_per_10min_per_operator"] == 15
    assert figures["flood_share"] == round(1 / 6, 4)


def test_cli_acts_on_the_local_database_and_prints_json(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    rec = _cond(store, clock, "alarm")
    store.close()
    db = str(tmp_path / "gw-alarms.sqlite")
    runner = CliRunner()
    out = runner.invoke(app, ["alarms", "ack", "CH4-1", "--db", db, "--by", "ana"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.splitlines()[-1])["state"] == ACK
    oos = ["alarms", "oos", rec.alarm_id, "--db", db, "--by", "ana", "--why", "bump test"]
    out = runner.invoke(app, oos)
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["alarms", "shelve", rec.alarm_id, "--db", db, "--by", "ana"])
    assert out.exit_code == 1 and "cannot be shelved" in out.output
    out = runner.invoke(app, ["alarms", "list", "--db", db, "--json"])
    assert json.loads(out.output.splitlines()[-1])["state"] == OOS
    out = runner.invoke(app, ["alarms", "unshelve", rec.alarm_id, "--db", db, "--by", "ana"])
    assert out.exit_code == 1 and "cannot be unshelved from state out_of_service" in out.output
    back = ["alarms", "oos", rec.alarm_id, "--return", "--db", db, "--by", "li", "--why", "ok"]
    assert runner.invoke(app, back).exit_code == 0
    out = runner.invoke(app, ["alarms", "shelve", rec.alarm_id, "--db", db, "--minutes", "5"])
    assert json.loads(out.output.splitlines()[-1])["state"] == SHELVED
    out = runner.invoke(app, ["alarms", "unshelve", rec.alarm_id, "--db", db, "--by", "li"])
    assert out.exit_code == 0 and json.loads(out.output.splitlines()[-1])["state"] == UNACK
    out = runner.invoke(app, ["alarms", "kpi", "--db", db, "--hours", "1000000"])
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output.splitlines()[-1])
    assert figures["alarms"] == 1
    assert [(c["console"], c["alarms"]) for c in figures["consoles"]] == [("gateway", 1)]
    reopened = AlarmStore(db)
    assert [(c.action, c.actor) for c in reopened.pending()][:2] == [
        ("acknowledge", "ana"), ("out_of_service", "ana"),
    ]  # fmt: skip
