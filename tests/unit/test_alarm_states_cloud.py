"""The cloud's mirror of the gateways' alarm states (cloud/alarm_states.py) and
GET /api/v1/alarms/states; operator actions from gateways land in the audit chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

import wire
from cloud import create_app
from cloud.alarm_states import AlarmMirror
from cloud.audit import AuditLog
from cloud.auth import Role
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import GATEWAY, SITE, T0, alarm


def ev(seq: int, alarm_id: str, **kw: Any) -> wire.AlarmEvent:
    base = alarm(seq, alarm_id=alarm_id, tag=kw.pop("tag", "CH4-101"))
    fields = {f: getattr(base, f) for f in base.__struct_fields__}
    return wire.AlarmEvent(**{**fields, **kw})


def cut(seq: int, alarm_id: str = "a1") -> wire.AlarmEvent:
    return ev(seq, alarm_id, level="cut", previous="normal", state="unacknowledged",
              priority="critical")  # fmt: skip


def action(seq: int, state: str, verb: str, actor: str, alarm_id: str = "a1") -> wire.AlarmEvent:
    return ev(seq, alarm_id, kind="alarm_state", level="cut", previous="cut", state=state,
              priority="critical", actor=actor, reason=f"alarm_{verb}",
              message=f"CH4-101 {verb} by {actor}")  # fmt: skip


def _mirror(tmp_path: Path) -> tuple[Store, AlarmMirror, AuditLog]:
    store = Store(cloud_db_url(tmp_path))
    store.create_all()
    audit = AuditLog(store.engine)
    audit.create_all()
    mirror = AlarmMirror(store.engine, audit)
    mirror.create_all()
    return store, mirror, audit


def test_states_follow_the_gateway_and_never_move_back(tmp_path: Path) -> None:
    _store, mirror, audit = _mirror(tmp_path)
    mirror([cut(1)])
    (row,) = mirror.states(SITE)
    assert (row.alarm_id, row.state, row.level, row.priority, row.kind) == (
        "a1", "unacknowledged", "cut", "critical", "ch4",
    )  # fmt: skip
    mirror([action(2, "acknowledged", "acknowledge", "wang")])
    (row,) = mirror.states(SITE)
    assert (row.state, row.actor, row.kind) == ("acknowledged", "wang", "ch4")
    # a late redelivery of the raise does not undo the acknowledgement
    mirror([cut(1)])
    assert mirror.states(SITE)[0].state == "acknowledged"
    # the condition clears while acknowledged: back to normal, gone from the default list
    mirror([ev(3, "a1", level="normal", previous="cut", state="normal", priority="critical")])
    assert mirror.states(SITE) == []
    assert [r.state for r in mirror.states(SITE, include_normal=True)] == ["normal"]
    # one audit row: the operator's acknowledgement, with the gateway in the actor
    (entry,) = [e for e in audit.entries(limit=10) if e.action == "alarm_acknowledged"]
    assert entry.actor == f"{GATEWAY}:wang" and entry.target == f"{SITE}/{GATEWAY}/CH4-101"
    assert audit.verify().ok


def test_every_isa_state_is_mirrored_and_only_operator_actions_are_audited(
    tmp_path: Path,
) -> None:
    _store, mirror, audit = _mirror(tmp_path)
    verbs = {
        "acknowledged": ("acknowledge", "op"),
        "returned_unacknowledged": ("clear", "gateway"),  # a condition change: not audited
        "shelved": ("shelve", "op"),
        "out_of_service": ("out_of_service", "op"),
        "suppressed": ("suppress", "gateway"),  # chattering, by design: not audited
    }
    for i, (state, (verb, actor)) in enumerate(verbs.items()):
        alarm_id = f"x{i}"
        mirror([cut(10 * i + 1, alarm_id), action(10 * i + 2, state, verb, actor, alarm_id)])
    by_id = {r.alarm_id: r.state for r in mirror.states(SITE)}
    assert sorted(by_id.values()) == sorted(verbs)
    audited = sorted(e.action for e in audit.entries(limit=50))
    assert audited == ["alarm_acknowledged", "alarm_out_of_service", "alarm_shelved"]
    # other gateway actions (calibration, reset, lockout test, config deploy) are audited too
    calibration = ev(99, "action-gw-1", kind="operator_action", level="normal",
                     previous="normal", actor="li", reason="action_calibrate",
                     message="calibrate CH4-101 by li: 30 min")  # fmt: skip
    mirror([calibration])
    (entry,) = audit.entries(limit=1, action="calibration")
    assert entry.actor == f"{GATEWAY}:li" and "30 min" in entry.details
    assert all(r.alarm_id != "action-gw-1" for r in mirror.states(SITE, include_normal=True))
    assert audit.verify().ok


async def test_the_api_lists_states_unacknowledged_first(tmp_path: Path) -> None:
    store, mirror, _audit = _mirror(tmp_path)
    mirror([cut(1, "old"), action(2, "acknowledged", "acknowledge", "op", "old")])
    mirror([ev(3, "new", tag="CO-1", kind="co", level="alarm", previous="normal",
               state="unacknowledged", priority="medium", ts_ns=T0 + 3)])  # fmt: skip
    auth = make_authenticator(store.engine)
    app = create_app(store, dict, authenticator=auth, audit=auth.audit)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        viewer = headers_for(auth, Role.VIEWER)
        response = await client.get("/api/v1/alarms/states", params={"site": SITE},
                                    headers=viewer)  # fmt: skip
        assert response.status_code == 200, response.text
        body = response.json()
        assert [(r["alarm_id"], r["state"]) for r in body] == [
            ("new", "unacknowledged"), ("old", "acknowledged"),
        ]  # fmt: skip
        assert body[1]["actor"] == "op" and body[1]["priority"] == "critical"
        unauthenticated = await client.get("/api/v1/alarms/states", params={"site": SITE})
        assert unauthenticated.status_code == 401
        missing = await client.get("/api/v1/alarms/states", headers=viewer)
        assert missing.status_code == 422
