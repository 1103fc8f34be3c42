"""The control-room wall page (大屏): the site map coloured by live risk grade, active
alarms with acknowledgement, KPIs, live by server-sent events, Chinese and English.

A service package: its snapshot logic (:class:`WallService`), its router
(:func:`wall_router`: the page, the snapshot and the stream) and its static files
(plain HTML/CSS/JS in ``static/``, shipped in the package: no CDN, no internet needed).
"""

from cloud.wall._api import STATIC_DIR, WallSettings, inline_page, snapshot_out, wall_router
from cloud.wall._service import (
    ALARM_EVENTS_SCANNED,
    ActiveAlarm,
    WallArea,
    WallGateway,
    WallService,
    WallSnapshot,
    active_alarms,
)

__all__ = [
    "ALARM_EVENTS_SCANNED",
    "STATIC_DIR",
    "ActiveAlarm",
    "WallArea",
    "WallGateway",
    "WallService",
    "WallSettings",
    "WallSnapshot",
    "active_alarms",
    "inline_page",
    "snapshot_out",
    "wall_router",
]
