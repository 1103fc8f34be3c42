"""Debian's headless Chromium driven over the Chrome DevTools Protocol, for browser tests.

No Playwright, no WebDriver, no websocket library: Chromium is started with
``--remote-debugging-pipe`` and speaks CDP on file descriptors 3 (commands in) and 4
(answers and events out), one JSON message per NUL-terminated frame. ``scripts/browser.sh``
installs the browser (``/usr/bin/chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "Browser", "BrowserError", "chromium_or_fail"]

CHROMIUM = Path(os.environ.get("SAFEWATCH_CHROMIUM", "/usr/bin/chromium"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    """CDP answered with an error, the page threw, or the browser went away."""


def chromium_or_fail() -> Path:
    """The browser binary; a clear failure naming the script that installs it."""
    if not os.access(CHROMIUM, os.X_OK):
        import pytest

        pytest.fail(f"{CHROMIUM} is required for the browser tests: run scripts/browser.sh")
    return CHROMIUM


def _above_9(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium with one page (tab), driven synchronously."""

    def __init__(
        self, profile_dir: Path, log: Path, *, width: int = 1920, height: int = 1080
    ) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child's ends above 9, so that moving them onto 3 and 4 clobbers nothing
        to_chrome_r, from_chrome_w = (_above_9(to_chrome_r), _above_9(from_chrome_w))
        binary = chromium_or_fail()
        argv = [
            str(binary),
            *FLAGS,
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # bash puts the pipe ends on the descriptors Chromium expects (3 in, 4 out)
        shell = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c", shell, "chromium", *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(to_chrome_r, from_chrome_w),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self.session = ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                frame, buf = buf.split(b"\0", 1)
                message = json.loads(frame)
                with self._cond:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def call(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one CDP command (to the page's session once attached) and wait for its answer."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode("utf-8") + b"\0")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if self._closed:
                    raise BrowserError(f"{method}: the browser went away")
                if left <= 0:
                    raise BrowserError(f"{method}: no answer within {timeout_s}s")
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def navigate(self, url: str) -> None:
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"navigate {url}: {answer['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def console_errors(self) -> list[str]:
        """Uncaught exceptions the page reported so far."""
        with self._cond:
            return [
                json.dumps(e["params"].get("exceptionDetails", {}))[:500]
                for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"
            ]

    def close(self) -> None:
        try:
            if not self._closed:
                self.call("Browser.close", timeout_s=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        self._reader.join(timeout=5)
        os.close(self._from_chrome)
        self._log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
