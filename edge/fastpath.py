"""The safety fast path: the safety buses' own thread and event loop, and the hand-offs.

Background polling (thousands of tags), telemetry batching, the SQLite buffer,
alarm records and the uplink all run on the gateway's main event loop. A bus
that carries a safety-class tag or an actuator is polled on
:class:`SafetyThread` instead: its own thread with its own loop, so a read that
returns an over-limit value is judged and its cut written without waiting for
any task of the main loop. What the safety thread produces for the main loop
goes through thread-safe hand-offs:

- :class:`Handoff`: a FIFO of calls run on the main loop in the order they were
  submitted (alarm records of the engine's decisions, write-failure alarms,
  model input), whatever thread submitted them;
- :class:`UplinkHandoff`: the engine's uplink queue; samples from another
  thread are carried over to the main loop's bounded queue, drops counted.

Latched state is still written before the interlock hears of a change (the
engine does both under its lock on the deciding thread). Both threads share
the GIL: :func:`SafetyThread.start` lowers the interpreter's switch interval so
that a main thread busy with background work hands the GIL over within
``switch_interval_s`` when the safety thread's socket becomes readable. Where
the process may (root or ``CAP_SYS_NICE``) and does not already run there (the shipped
unit sets ``Nice=-10`` for the whole gateway), the
safety thread also raises its own scheduling priority (``nice`` -10), so a
machine busy with other work still runs it first when a reply arrives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from device_drivers import Sample, SampleBlock

__all__ = ["TICK_CHUNK", "Handoff", "SafetyThread", "UplinkHandoff", "UplinkSink"]

log = logging.getLogger("safewatch.edge.fastpath")

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

SWITCH_INTERVAL_S = 0.0005
SAFETY_NICE = -10  # the safety thread's scheduling priority where the process may raise it
HANDOFF_MAX = 100_000  # calls waiting for the main loop before new ones are dropped
TICK_CHUNK = 64  # rules ticked per hold of the engine lock (SafetyEngine.tick_rules)


class SafetyThread:
    """One daemon thread running one asyncio event loop for the safety buses."""

    def __init__(
        self,
        name: str = "safety-loop",
        *,
        switch_interval_s: float = SWITCH_INTERVAL_S,
        nice: int | None = SAFETY_NICE,
    ) -> None:
        self.name = name
        self.nice = nice
        self.niced = False
        self.switch_interval_s = switch_interval_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread_id = 0
        self.native_id = 0  # the kernel's id of the thread (for its scheduling priority)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._previous_switch: float | None = None

    def start(self) -> None:
        """Start the thread and its loop; returns once the loop runs."""
        if self._thread is not None:
            return
        self._previous_switch = sys.getswitchinterval()
        if self.switch_interval_s < self._previous_switch:
            sys.setswitchinterval(self.switch_interval_s)
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self.thread_id = threading.get_ident()
        self.native_id = threading.get_native_id()
        self._raise_priority()
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _raise_priority(self) -> None:
        """Best effort: this thread ahead of the machine's other work (needs CAP_SYS_NICE)."""
        if self.nice is None or not hasattr(os, "setpriority"):
            return
        current = os.getpriority(os.PRIO_PROCESS, self.native_id)
        if current <= self.nice:
            return  # the process already runs at that priority or higher: never lower it
        try:
            os.setpriority(os.PRIO_PROCESS, self.native_id, self.nice)
        except OSError as exc:
            log.info("%s keeps its priority (nice %d refused: %s)", self.name, self.nice, exc)
            return
        self.niced = True
        log.info("%s runs at nice %d", self.name, self.nice)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the safety loop; a concurrent future of its result."""
        if self.loop is None or self.loop.is_closed():
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` on the safety loop soon (from any thread); nothing once it is closed."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop (after its work was cancelled and awaited) and join the thread."""
        thread, loop = self._thread, self.loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if thread.is_alive():
            log.error("%s did not stop within %.1f s", self.name, timeout_s)
        self._thread = None
        self.loop = None
        self._ready.clear()
        if self._previous_switch is not None:
            sys.setswitchinterval(self._previous_switch)
            self._previous_switch = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class Handoff:
    """Calls for the main loop, submitted from any thread, run there in submission order.

    Until :meth:`bind` names the loop (construction, tests) a call runs at once.
    Bounded: past ``maxlen`` waiting calls new ones are dropped and counted (a
    main loop that stopped running must not grow the gateway without end).
    """

    def __init__(self, name: str = "handoff", maxlen: int = HANDOFF_MAX) -> None:
        self.name = name
        self.maxlen = maxlen
        self.dropped = 0
        self.failed = 0
        self._items: deque[Callable[[], object]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Run submitted calls on ``loop`` from now on (None: inline again, after a drain)."""
        if loop is None:
            self.drain()
        self._loop = loop

    def __len__(self) -> int:
        return len(self._items)

    def submit(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None:
            self._run(fn)
            return
        with self._lock:
            if len(self._items) >= self.maxlen:
                self.dropped += 1
                return
            self._items.append(fn)
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            try:
                loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the main loop is closed: nobody will drain
                with self._lock:
                    self._scheduled = False

    def drain(self) -> int:
        """Run every waiting call now (on the main loop); returns how many ran."""
        with self._lock:
            batch = list(self._items)
            self._items.clear()
            self._scheduled = False
        for fn in batch:
            self._run(fn)
        return len(batch)

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # one bad record must not stop the others
            self.failed += 1
            log.exception("%s: a handed-off call failed", self.name)


class UplinkSink(Protocol):
    """Where the engine puts samples for the uplink (``asyncio.Queue`` or an
    :class:`UplinkHandoff`); ``put_nowait`` raises :class:`asyncio.QueueFull` on a drop."""

    def put_nowait(self, item: Sample, /) -> None: ...


class _Queue(Protocol[T_contra]):
    def put_nowait(self, item: T_contra, /) -> None: ...


class UplinkHandoff(Generic[T]):
    """The engine's uplink sink for two threads: the main loop's thread puts straight into
    the bounded queue; another thread's items are carried over by a :class:`Handoff`
    (one call per batch), and what the full queue refuses there is counted in
    :attr:`dropped`."""

    def __init__(self, queue: _Queue[T], main_thread_id: int | None = None) -> None:
        self.queue = queue
        self.main_thread_id = main_thread_id or threading.get_ident()
        self.dropped = 0
        self._pending: deque[T] = deque()
        self._carry = Handoff("uplink-handoff")

    def bind(self, loop: asyncio.AbstractEventLoop, thread_id: int | None = None) -> None:
        self.main_thread_id = thread_id or threading.get_ident()
        self._carry.bind(loop)

    def put_nowait(self, item: T) -> None:
        if threading.get_ident() == self.main_thread_id:
            self.queue.put_nowait(item)  # QueueFull reaches the engine, which counts it
            return
        if len(self._pending) >= HANDOFF_MAX:
            raise asyncio.QueueFull
        self._pending.append(item)
        if len(self._pending) == 1:
            self._carry.submit(self._move)

    def put_block(self, block: SampleBlock) -> bool:
        """One device read as one item (what ``SampleQueue.put_block`` takes); False when
        it was refused whole (the engine counts its samples as dropped)."""
        if threading.get_ident() == self.main_thread_id:
            return self._put_block(block)
        if len(self._pending) >= HANDOFF_MAX:
            return False
        self._pending.append(block)  # type: ignore[arg-type]
        if len(self._pending) == 1:
            self._carry.submit(self._move)
        return True

    def drain(self) -> None:
        """Carry over what another thread left (at shutdown, on the main loop)."""
        self._carry.drain()

    def _put_block(self, block: SampleBlock) -> bool:
        put_block: Callable[[SampleBlock], bool] | None = getattr(self.queue, "put_block", None)
        if put_block is not None:
            return put_block(block)
        for sample in block:  # a plain queue: one sample at a time, all or the rest dropped
            try:
                self.queue.put_nowait(sample)  # type: ignore[arg-type]
            except asyncio.QueueFull:
                return False
        return True

    def _move(self) -> None:
        pending = self._pending
        while pending:
            item = pending.popleft()
            if isinstance(item, SampleBlock):
                if not self._put_block(item):
                    self.dropped += len(item)
                continue
            try:
                self.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1
