"""POST /api/v1/gateways/{site}/{gateway}/commands refuses malformed alarm actions (422,
naming the argument) before anything is signed or sent."""

from __future__ import annotations

from pathlib import Path

import httpx

import wire
from cloud import create_app
from cloud.auth import Role
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url


async def test_alarm_commands_are_refused_with_the_missing_argument_named(tmp_path: Path) -> None:
    """Checked by the API before anything is signed: a gateway would refuse them silently."""
    store = Store(cloud_db_url(tmp_path, "api.db"))
    store.create_all()
    auth = make_authenticator(store.engine)
    app = create_app(store, dict, authenticator=auth, audit=auth.audit)  # no command key
    url = "/api/v1/gateways/mine-a/gw-1/commands"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers=headers_for(auth, Role.SAFETY_ENGINEER),
    ) as client:

        async def refused(action: str, **args: object) -> list[tuple[object, ...]]:
            """Where the API's 422 says the request is wrong (its ``loc`` paths)."""
            got = await client.post(url, json={"action": action, "args": args})
            assert got.status_code == 422, got.text
            return [tuple(e["loc"]) for e in got.json()["detail"]]

        async def status(action: str, **args: object) -> int:
            got = await client.post(url, json={"action": action, "args": args})
            return got.status_code

        assert await refused("acknowledge") == [("body", "acknowledge", "args", "alarm")]
        assert await refused("out_of_service", alarm="a1", why="  ") == [
            ("body", "out_of_service", "args", "why")
        ]
        assert await refused("out_of_service", alarm="a1") == [
            ("body", "out_of_service", "args", "why")
        ]
        assert await refused("shelve", alarm="a1", duration_s=8 * 86400) == [
            ("body", "shelve", "args", "duration_s")
        ]
        assert await refused("shelve", alarm="a1", duration_s="1h") == [
            ("body", "shelve", "args", "duration_s")
        ]
        assert await refused("unshelve", alarm="a1", reason="typo") == [
            ("body", "unshelve", "args", "reason")
        ]
        # well formed: on to the sender, which this API has not got
        assert await status("out_of_service", alarm="a1", why="sensor replaced") == 503
        assert await status("shelve", alarm="a1", duration_s=900) == 503
        assert await status("ping") == 503
        assert await status("reset", tag="CH4-1", by="wang") == 503


def test_the_request_schema_names_every_command_action() -> None:
    from typing import get_args

    from cloud.commands_api import CommandIn

    union = get_args(get_args(CommandIn)[0])
    actions = {a for model in union for a in get_args(model.model_fields["action"].annotation)}
    assert actions == set(wire.COMMAND_ACTIONS)
