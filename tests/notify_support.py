"""Local stand-ins for the services notifications go to, driven by apprise's own plugins.

* :class:`VendorProxy`: DingTalk and WeCom bots post to fixed vendor hosts
  (``oapi.dingtalk.com``, ``qyapi.weixin.qq.com``), so a test cannot point them at a local
  port. apprise sends through ``requests``, which honours ``HTTPS_PROXY`` and
  ``REQUESTS_CA_BUNDLE`` - as a gateway behind a site's egress proxy would. The proxy takes
  each ``CONNECT``, answers it, speaks TLS with a certificate for the vendor host signed by a
  test CA (the only CA the client trusts during the test) and records the one request sent
  inside: the real plugin, real HTTPS with certificate checks, nothing leaves the machine.
* :class:`SmsGateway`: an SMSEagle-style hardware SMS gateway on the site network (JSON-RPC
  ``/jsonrpc/sms``, what apprise's ``smseagle://`` plugin speaks), answering like the device.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.tls_support import make_site_cert

VENDOR_HOSTS = ("oapi.dingtalk.com", "qyapi.weixin.qq.com")


@dataclass(frozen=True)
class Delivered:
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


def _read_request(stream: Any) -> tuple[str, dict[str, str], bytes]:
    """(target, headers, body) of one HTTP/1.1 request from a file-like stream."""
    line = stream.readline().decode("latin-1")
    _method, target, _version = line.split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = stream.readline().decode("latin-1")
        if raw in ("\r\n", "\n", ""):
            break
        name, _, value = raw.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return target, headers, body


class VendorProxy:
    """An HTTPS proxy that plays the vendors' bot APIs (see the module docstring)."""

    def __init__(self, directory: Path, hosts: tuple[str, ...] = VENDOR_HOSTS) -> None:
        self.ca, cert, key = make_site_cert(directory, *hosts)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.got: list[Delivered] = []
        self.status: dict[str, int] = {}  # host -> the HTTP status its API answers
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                host = self.path.rsplit(":", 1)[0]
                self.send_response(200, "Connection established")
                self.end_headers()
                with context.wrap_socket(self.connection, server_side=True) as tls:
                    target, headers, body = _read_request(tls.makefile("rb"))
                    parts = urlsplit(target)
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    proxy.got.append(
                        Delivered(host, parts.path, query, headers, json.loads(body or b"{}"))
                    )
                    status = proxy.status.get(host, 200)
                    answer = json.dumps({"errcode": 0 if status == 200 else 1, "errmsg": "ok"})
                    data = answer.encode()
                    tls.sendall(
                        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                        + data
                    )
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def env(self) -> dict[str, str]:
        """What the gateway process needs to send through this proxy and trust its CA."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": str(self.ca),
        }

    def to(self, host: str) -> list[Delivered]:
        return [d for d in self.got if d.host == host]

    def __enter__(self) -> VendorProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class SmsGateway:
    """An SMSEagle-style SMS gateway: records each ``sms.send_sms`` call and answers ok."""

    got: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> SmsGateway:
        received = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append({"path": self.path, **body})
                data = json.dumps({"result": {"message_id": len(received), "status": "ok"}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, phone: str, token: str = "eagletoken1") -> str:
        return f"smseagle://{token}@127.0.0.1:{self.port}/{phone}"

    def texts_to(self, phone: str) -> list[str]:
        return [m["params"]["message"] for m in self.got if m["params"].get("to") == phone]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def closed_port() -> int:
    """A local port nothing listens on (a channel that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
