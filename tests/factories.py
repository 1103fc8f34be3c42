"""Builders of wire messages for tests, with a keyword override for every field.

The defaults describe one methane sensor (``CH4-101`` on ``gas-1`` at the face of
``panel-3``) of gateway ``gw-1`` at site ``mine-a``, stamped at :data:`T0`. A test that
asserts a value of a message passes that value explicitly instead of relying on a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import wire

T0 = 1_700_000_000_000_000_000
"""2023-11-14T22:13:20Z as Unix nanoseconds: the default time of every builder."""

SITE = "mine-a"
GATEWAY = "gw-1"


def point(
    tag: str = "CH4-101",
    value: float | None = 0.4,
    ts_ns: int = T0,
    *,
    quality: wire.QualityName = "good",
    reason: str | None = None,
    device: str = "gas-1",
    kind: str = "ch4",
    unit: str = "%",
    area: str = "panel-3",
    position: str = "face",
) -> wire.Point:
    return wire.Point(
        tag=tag,
        device=device,
        kind=kind,
        unit=unit,
        area=area,
        position=position,
        value=value,
        quality=quality,
        ts_ns=ts_ns,
        reason=reason,
    )


def telemetry(
    seq: int,
    *points: wire.Point,
    site: str = SITE,
    gateway: str = GATEWAY,
    sent_ns: int = T0,
) -> wire.TelemetryBatch:
    return wire.TelemetryBatch(
        gateway=gateway, site=site, seq=seq, sent_ns=sent_ns, points=list(points)
    )


def alarm(
    seq: int = 1,
    *,
    level: wire.AlarmLevel = "cut",
    previous: wire.AlarmLevel = "alarm",
    tag: str = "CH4-101",
    value: float | None = 1.6,
    threshold: float | None = 1.5,
    ts_ns: int | None = None,
    alarm_id: str | None = None,
    message: str | None = None,
    actuators: Sequence[str] = ("power-1201",),
    site: str = SITE,
    gateway: str = GATEWAY,
    device: str = "gas-1",
    kind: str = "ch4",
    area: str = "panel-3",
    position: str = "face",
    reason: str = "",
) -> wire.AlarmEvent:
    """An alarm-level change; ``ts_ns`` defaults to ``T0 + seq``, so a higher seq is newer."""
    return wire.AlarmEvent(
        gateway=gateway,
        site=site,
        seq=seq,
        alarm_id=f"{tag}-{seq}" if alarm_id is None else alarm_id,
        tag=tag,
        device=device,
        kind=kind,
        area=area,
        position=position,
        level=level,
        previous=previous,
        value=value,
        threshold=threshold,
        ts_ns=T0 + seq if ts_ns is None else ts_ns,
        message=f"{tag} {level}" if message is None else message,
        actuators=list(actuators),
        reason=reason,
    )


def gap(
    seq: int,
    *,
    first_seq: int,
    last_seq: int,
    dropped: int,
    reason: str = "buffer full",
    ts_ns: int = T0,
    site: str = SITE,
    gateway: str = GATEWAY,
) -> wire.GapEvent:
    return wire.GapEvent(
        gateway=gateway,
        site=site,
        seq=seq,
        first_seq=first_seq,
        last_seq=last_seq,
        dropped=dropped,
        reason=reason,
        ts_ns=ts_ns,
    )


def gateway_status(
    state: Literal["online", "offline"] = "online",
    *,
    ts_ns: int = T0,
    version: str = "",
    site: str = SITE,
    gateway: str = GATEWAY,
) -> wire.GatewayStatus:
    return wire.GatewayStatus(gateway=gateway, site=site, state=state, ts_ns=ts_ns, version=version)
