"""``POST /api/v1/gateways/{site}/{gateway}/commands``: signed commands from the API."""

# No ``from __future__ import annotations``: the route names a local guard in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import datetime as dt
from typing import Annotated

import aiomqtt
from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field, model_validator

import wire
from cloud.auth import Guards, Principal, Role, error_responses
from cloud.commands import CommandSender
from cloud.storage import StoreError

__all__ = ["commands_router"]

_ID = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
_ArgValue = str | int | float | bool | None


# alarm actions name their alarm; out of service needs a reason; a shelve lasts at most a
# week (the gateway's own limits, edge/alarm_manager.py: refused here, not silently there)
ALARM_ACTIONS = ("acknowledge", "shelve", "unshelve", "out_of_service", "return_to_service")
MAX_SHELVE_S = 7 * 24 * 3600.0


class CommandIn(BaseModel):
    action: wire.CommandAction
    args: dict[Annotated[str, Field(max_length=64)], _ArgValue] = Field(
        default_factory=dict, max_length=32
    )
    ttl_s: float = Field(default=60.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _alarm_args(self) -> "CommandIn":
        if self.action not in ALARM_ACTIONS:
            return self
        alarm = self.args.get("alarm")
        if not isinstance(alarm, str) or not alarm.strip():
            raise ValueError(f"{self.action} needs args.alarm: the alarm id (or rule|tag)")
        why = self.args.get("why", self.args.get("reason"))
        if self.action == "out_of_service" and not (isinstance(why, str) and why.strip()):
            raise ValueError("out_of_service needs args.why: the reason")
        duration = self.args.get("duration_s")
        if self.action == "shelve" and duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                raise ValueError("shelve args.duration_s must be a number of seconds")
            if not 0 < duration <= MAX_SHELVE_S:
                raise ValueError(f"shelve args.duration_s must be within 0..{MAX_SHELVE_S:g}")
        return self


class CommandOut(BaseModel):
    id: str
    site: str
    gateway: str
    action: str
    issuer: str
    expires_at: dt.datetime


def commands_router(sender: CommandSender | None, guards: Guards) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    operators = guards(Role.ADMIN, Role.SAFETY_ENGINEER)

    @router.post(
        "/gateways/{site}/{gateway}/commands",
        response_model=CommandOut,
        status_code=202,
        tags=["commands"],
        summary="Sign and send a command to one gateway (audited)",
        responses=error_responses(401, 403, 422, 503),
    )
    async def send(
        site: Annotated[str, _ID],
        gateway: Annotated[str, _ID],
        body: CommandIn,
        principal: Annotated[Principal, Depends(operators)],
    ) -> CommandOut:
        if sender is None:
            raise HTTPException(status_code=503, detail="commands are not configured")
        try:
            command = await sender.send(
                site, gateway, body.action, principal.name, body.args, body.ttl_s
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise HTTPException(status_code=503, detail=f"broker unavailable: {exc}") from exc
        except StoreError as exc:  # sent, but not recorded: say so loudly
            raise HTTPException(
                status_code=503, detail=f"command sent but the audit trail failed: {exc}"
            ) from exc
        return CommandOut(
            id=command.id,
            site=site,
            gateway=gateway,
            action=command.action,
            issuer=command.issuer,
            expires_at=dt.datetime.fromtimestamp(command.expires_ns / 1e9, dt.UTC),
        )

    return router
