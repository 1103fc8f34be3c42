"""A lean HTTP/1.1 load client for the benches: keep-alive GETs over a fixed pool.

httpx spends about a millisecond of CPU per request; at 500 requests/s on a small box
that is half a core taken from the server being measured. This client does only what
a bench needs - GET with fixed headers over persistent connections, status, headers
and a Content-Length body (or a 304 without one) - in tens of microseconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["LeanClient", "LeanResponse"]


@dataclass(frozen=True, slots=True)
class LeanResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class LeanClient:
    """GETs to one ``host:port``; a request waits for a free connection of the pool."""

    def __init__(
        self, host: str, port: int, *, headers: dict[str, str], connections: int = 32
    ) -> None:
        self.host = host
        self.port = port
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
            asyncio.Queue()
        )
        for _ in range(connections):
            self._idle.put_nowait(None)  # opened on first use
        self._open: list[asyncio.StreamWriter] = []

    async def get(self, path: str, headers: dict[str, str] | None = None) -> LeanResponse:
        conn = await self._idle.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
                self._open.append(conn[1])
            reader, writer = conn
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self._extra}{extra}\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
            if "chunked" in fields.get("transfer-encoding", ""):
                raise ValueError(f"lean client: chunked answer to {path} (not supported)")
            length = int(fields.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            if fields.get("connection", "").lower() == "close":
                writer.close()
                conn = None
            return LeanResponse(status, fields, body)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if conn is not None:
                conn[1].close()
            conn = None  # a new connection for the next request
            raise
        finally:
            self._idle.put_nowait(conn)

    async def aclose(self) -> None:
        for writer in self._open:
            writer.close()
        self._open.clear()
