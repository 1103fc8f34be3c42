"""POST /api/v1/gateways/{site}/{gateway}/commands refuses malformed alarm actions (422,
naming the argument) before anything is signed or sent."""

from __future__ import annotations

from pathlib import Path

import httpx

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

        async def answer(action: str, **args: object) -> tuple[int, str]:
            got = await client.post(url, json={"action": action, "args": args})
            return got.status_code, got.text

        code, text = await answer("acknowledge")
        assert code == 422 and "needs args.alarm" in text
        code, text = await answer("out_of_service", alarm="a1", why="  ")
        assert code == 422 and "out_of_service needs args.why" in text
        code, text = await answer("shelve", alarm="a1", duration_s=8 * 86400)
        assert code == 422 and "duration_s must be within" in text
        code, text = await answer("shelve", alarm="a1", duration_s="1h")
        assert code == 422 and "must be a number of seconds" in text
        # well formed: on to the sender, which this API has not got
        assert (await answer("out_of_service", alarm="a1", why="sensor replaced"))[0] == 503
        assert (await answer("shelve", alarm="a1", duration_s=900))[0] == 503
        assert (await answer("ping"))[0] == 503
