"""The control-room wall: the page (``GET /wall``, public: it holds no data), its static
files (``/wall/static``), a snapshot route and a server-sent-event stream.

Data routes need a bearer token of any role, like every other read route. The page
takes it from a login form (an access token, kept in the tab's ``sessionStorage``)
or, for a kiosk, from the URL fragment ``#token=swt...`` (a machine token, kept in
``localStorage``; a fragment never reaches a server or its logs). The stream is read
with ``fetch`` so the token travels in the ``Authorization`` header, never in a URL.

The stream sends the site's snapshot when it changes (``event: snapshot``), FastAPI's
keep-alive comment while nothing does, re-checks the token every ``reauth_s`` (a
revoked token or disabled user ends it with ``event: auth``) and ends after
``stream_max_s`` (``event: bye``); the page reconnects.
"""

# No ``from __future__ import annotations``: routes name local guards in
# ``Annotated[..., Depends(...)]``, which FastAPI must see evaluated.

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, computed_field

from cloud.auth import ALL_ROLES, Guards, NotAuthenticated, Principal, error_responses
from cloud.storage import StoreError
from cloud.wall._service import WallService, WallSnapshot

__all__ = ["STATIC_DIR", "WallSettings", "inline_page", "snapshot_out", "wall_router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_PATH = "/wall"
STATIC_PATH = "/wall/static"
_SITE_MAX = 128


@dataclass(frozen=True)
class WallSettings:
    interval_s: float = 1.0  # how often a stream looks for a change (shared cache)
    stream_max_s: float = 900.0  # a stream ends after this long; the page reconnects
    reauth_s: float = 60.0  # a stream re-checks its token this often
    retry_ms: int = 3000  # the reconnect delay the page is told


def _iso(ts_ns: int) -> str:
    stamp = dt.datetime.fromtimestamp(ts_ns // 1000 / 1e6, dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Attrs(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ContributionOut(BaseModel):
    factor: str
    detail: str
    points: float


class WallAreaOut(_Attrs):
    id: str
    name: str
    polygon: list[tuple[float, float]]
    grade: str
    static_grade: str
    points: float
    contributions: list[ContributionOut]
    alarms: int


class ActiveAlarmOut(_Attrs):
    alarm_id: str
    gateway: str
    tag: str
    device: str
    kind: str
    area: str
    position: str
    level: str
    state: str
    value: float | None
    threshold: float | None
    message: str
    since_ns: int
    ts_ns: int
    action: str
    shelved_until_ns: int | None  # while shelved: when it runs out
    note: str  # while shelved or out of service: the operator's reason

    @computed_field  # type: ignore[prop-decorator]
    @property
    def since(self) -> str:
        return _iso(self.since_ns)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def shelved_until(self) -> str | None:
        return None if self.shelved_until_ns is None else _iso(self.shelved_until_ns)


class WallGatewayOut(_Attrs):
    gateway: str
    state: str
    last_seen: dt.datetime | None


class WallSnapshotOut(_Attrs):
    site: str
    at: dt.datetime
    risk_configured: bool
    version: str
    areas: list[WallAreaOut]
    alarms: list[ActiveAlarmOut]
    gateways: list[WallGatewayOut]


def snapshot_out(snap: WallSnapshot) -> WallSnapshotOut:
    return WallSnapshotOut.model_validate(dataclasses.asdict(snap))


_CSS_LINK = '<link rel="stylesheet" href="wall/static/wall.css">'
_JS_TAG = '<script src="wall/static/wall.js"></script>'


def inline_page() -> str:
    """index.html with wall.css and wall.js inlined: one request before the data call
    (the first screen is due within a second, on a loaded control-room PC too). The
    files stay under /wall/static as they are; a page without the two tags links them."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css = (STATIC_DIR / "wall.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "wall.js").read_text(encoding="utf-8")
    if "</style" in css or "</script" in js:
        return html  # cannot be inlined safely: served as linked files
    return html.replace(_CSS_LINK, f"<style>\n{css}</style>").replace(
        _JS_TAG, f"<script>\n{js}</script>"
    )


def _unavailable(exc: StoreError) -> HTTPException:
    return HTTPException(status_code=503, detail=f"database unavailable: {exc}"[:300])


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def wall_router(
    service: WallService, guards: Guards, settings: WallSettings | None = None
) -> APIRouter:
    cfg = settings or WallSettings()
    router = APIRouter()
    readers = guards(*ALL_ROLES)
    page = inline_page()

    @router.get(PAGE_PATH, response_class=HTMLResponse, include_in_schema=False)
    def wall_page() -> HTMLResponse:
        """The page itself: public, no data in it; every data call carries a token."""
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    def resolve_site(
        site: Annotated[str | None, Query(min_length=1, max_length=_SITE_MAX)] = None,
    ) -> str:
        try:
            chosen = site or service.default_site()
            known = bool(chosen) and service.known(chosen)
        except StoreError as exc:
            raise _unavailable(exc) from exc
        if not chosen:
            raise HTTPException(status_code=404, detail="no site configured or received: pass site")
        if not known:
            raise HTTPException(status_code=404, detail=f"unknown site {chosen!r}"[:300])
        return chosen

    @router.get(
        "/api/v1/wall/snapshot",
        response_model=WallSnapshotOut,
        tags=["wall"],
        summary="What the wall shows now: areas by live grade, active alarms, gateways",
        responses=error_responses(401, 403, 404, 422, 503),
    )
    def snapshot(
        _: Annotated[Principal, Depends(readers)],
        site: Annotated[str, Depends(resolve_site)],
    ) -> WallSnapshotOut:
        try:
            return snapshot_out(service.cached(site, cfg.interval_s))
        except StoreError as exc:
            raise _unavailable(exc) from exc

    def required_site(
        site: Annotated[str, Query(min_length=1, max_length=_SITE_MAX)],
    ) -> str:
        return resolve_site(site)

    @router.get(
        "/api/v1/wall/stream",
        response_class=EventSourceResponse,
        tags=["wall"],
        summary="Server-sent events: the site's wall snapshot whenever it changes",
        responses=error_responses(401, 403, 404, 422, 503),
    )
    async def stream(
        request: Request,
        _: Annotated[Principal, Depends(readers)],
        site: Annotated[str, Depends(required_site)],
    ) -> AsyncIterator[ServerSentEvent]:
        token = _bearer(request)
        loop = asyncio.get_running_loop()
        started = checked = loop.time()
        last = ""
        sent = 0
        yield ServerSentEvent(comment=f"safewatch wall {site}", retry=cfg.retry_ms)
        while True:
            try:
                snap = await asyncio.to_thread(service.cached, site, cfg.interval_s)
            except StoreError as exc:
                detail = f"database unavailable: {exc}"[:300]
                yield ServerSentEvent(event="problem", data={"detail": detail})
            else:
                if snap.version != last:
                    last = snap.version
                    sent += 1
                    yield ServerSentEvent(event="snapshot", id=str(sent), data=snapshot_out(snap))
            now = loop.time()
            if now - checked >= cfg.reauth_s:
                checked = now
                problem = await asyncio.to_thread(_still_allowed, guards, token)
                if problem:
                    yield ServerSentEvent(event="auth", data={"detail": problem})
                    return
            if now - started >= cfg.stream_max_s:
                yield ServerSentEvent(event="bye", data={"detail": "stream lifetime over"})
                return
            await asyncio.sleep(cfg.interval_s)

    return router


def _still_allowed(guards: Guards, token: str) -> str:
    """ "" while ``token`` still authenticates, else why not (revoked, expired, disabled)."""
    try:
        principal = guards.authenticator.authenticate(token)
    except NotAuthenticated as exc:
        return str(exc)[:300] or "not authenticated"
    except StoreError:
        return ""  # the database is down: keep showing what we have; the next check decides
    return "" if principal.role in ALL_ROLES else f"role {principal.role} may not read"
