"""``POST /api/v1/gateways/{site}/{gateway}/commands``: signed commands from the API."""

# No ``from __future__ import annotations``: the route names a local guard in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import datetime as dt
from typing import Annotated, Literal

import aiomqtt
from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from cloud.auth import Guards, Principal, Role, error_responses
from cloud.commands import CommandSender
from cloud.storage import StoreError

__all__ = ["commands_router"]

_ID = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
_ArgValue = str | int | float | bool | None


# Alarm actions name their alarm; out of service needs a reason; a shelve lasts at most a
# week (the gateway's own limits, edge/alarm_manager.py): the request schema says so, so a
# client learns it from the API (422 naming the field), not from a gateway that refuses
# silently. The other actions take free arguments (the engineer commands' own checks).
MAX_SHELVE_S = 7 * 24 * 3600.0


class _CommandBase(BaseModel):
    ttl_s: float = Field(default=60.0, ge=1, le=3600)


class AlarmArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alarm: str = Field(min_length=1, max_length=256, description="alarm id, rule|tag or tag")
    why: str = Field(default="", max_length=500, description="why (audited)")


class ShelveArgs(AlarmArgs):
    duration_s: float | None = Field(
        default=None, gt=0, le=MAX_SHELVE_S, description="how long (default 8 h)"
    )


class OutOfServiceArgs(AlarmArgs):
    why: str = Field(min_length=1, max_length=500, pattern=r"\S", description="the reason")


class AlarmCommandIn(_CommandBase):
    action: Literal["acknowledge", "unshelve", "return_to_service"]
    args: AlarmArgs


class ShelveCommandIn(_CommandBase):
    action: Literal["shelve"]
    args: ShelveArgs


class OutOfServiceCommandIn(_CommandBase):
    action: Literal["out_of_service"]
    args: OutOfServiceArgs


class OtherCommandIn(_CommandBase):
    action: Literal["ping", "reset", "calibrate", "end_calibration", "lockout_test", "config_push"]
    args: dict[Annotated[str, Field(max_length=64)], _ArgValue] = Field(
        default_factory=dict, max_length=32
    )


CommandIn = Annotated[
    AlarmCommandIn | ShelveCommandIn | OutOfServiceCommandIn | OtherCommandIn,
    Field(discriminator="action"),
]


def _args(
    body: AlarmCommandIn | ShelveCommandIn | OutOfServiceCommandIn | OtherCommandIn,
) -> dict[str, _ArgValue]:
    if isinstance(body, OtherCommandIn):
        return dict(body.args)
    return body.args.model_dump(exclude_none=True)


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
                site, gateway, body.action, principal.name, _args(body), body.ttl_s
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
