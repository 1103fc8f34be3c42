"""The connect-on-use loop every bus driver shares.

A driver never keeps a background reconnect task. The first read (or an
explicit :meth:`LazyConnection.open`) connects; when the connection is lost,
the next read connects again. A failed connect starts a capped, jittered
exponential backoff: until it has passed, reads fail at once with
:class:`DeviceUnavailable` instead of spending a connect timeout each, so a
dead endpoint costs its bus's poller nothing. "Equal jitter" (at least half
the step) spreads the retries of many gateways after a site-wide outage.

A driver implements ``connected`` and ``_connect()`` (connect, or raise
:class:`DeviceUnavailable` naming the bus); this class owns the rest.
"""

from __future__ import annotations

import asyncio
import random
import time

from device_drivers._errors import DeviceUnavailable

__all__ = ["LazyConnection"]


class LazyConnection:
    """Lazy connect with backoff, for one bus named ``name``, reached at ``where`` (for
    messages). ``failures``: consecutive failed connects."""

    name: str

    def __init__(
        self, name: str, where: str, *, backoff_initial_s: float, backoff_max_s: float
    ) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.name = name
        self._where = where
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self.failures = 0
        self._next_attempt = 0.0  # time.monotonic() before which no connect is tried
        self._connect_lock: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:  # pragma: no cover - every driver overrides it
        raise NotImplementedError

    async def _connect(self) -> None:  # pragma: no cover - every driver overrides it
        raise NotImplementedError

    async def open(self) -> None:
        """Connect now (ignoring any backoff); raise :class:`DeviceUnavailable` on failure."""
        if self._connect_lock is None:  # created in the loop that uses it
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.connected:
                return
            try:
                await self._connect()
            except DeviceUnavailable:
                self.connect_failed()
                raise
            self.failures = 0
            self._next_attempt = 0.0

    def connect_failed(self) -> None:
        """Count a failed connect (or a lost connection) and push the next attempt back."""
        self.failures += 1
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (self.failures - 1))
        self._next_attempt = time.monotonic() + ceiling / 2 + random.uniform(0, ceiling / 2)

    async def ensure_open(self, device: str) -> None:
        """Connected on return; else :class:`DeviceUnavailable` naming ``device``: at once
        while backing off, or when this connect attempt fails."""
        if self.connected:
            return
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            raise DeviceUnavailable(
                device, f"{self._where} not connected; next reconnect attempt in {wait:.2f} s"
            )
        try:
            await self.open()
        except DeviceUnavailable as exc:
            raise DeviceUnavailable(device, exc.message) from exc.__cause__
