"""Answers built once and served many times: a body kept with its gzip form.

The heatmap snapshot and the cached hazard list pages are serialised when they are
built, not per request; so is their gzip form (a 1,000-unit heatmap: ~250 kB of JSON,
~15 kB gzipped), sent to every client that accepts it (browsers, httpx).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

__all__ = ["EncodedBody", "encoded_response"]

_GZIP_FROM = 1024  # smaller bodies go as they are


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """A JSON body and, when it is worth it, its gzip form (level 6, made once)."""

    body: bytes
    gzipped: bytes | None = field(default=None)

    @classmethod
    def of(cls, body: bytes) -> EncodedBody:
        if len(body) < _GZIP_FROM:
            return cls(body)
        return cls(body, gzip.compress(body, compresslevel=6, mtime=0))


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def encoded_response(
    request: Request, encoded: EncodedBody, headers: dict[str, str] | None = None
) -> Response:
    """``encoded`` as JSON, gzipped when the client accepts it."""
    out = {"Vary": "Accept-Encoding", **(headers or {})}
    if encoded.gzipped is not None and _accepts_gzip(request):
        out["Content-Encoding"] = "gzip"
        return Response(encoded.gzipped, media_type="application/json", headers=out)
    return Response(encoded.body, media_type="application/json", headers=out)
