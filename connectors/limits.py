"""A client-side concurrency limiter that holds across threads and event loops.

Prefect may run tasks of one flow in several threads, each with its own event loop, while they
share one ERP account's concurrency limit. ``asyncio.Semaphore`` belongs to one loop, so this
limiter keeps its count under a thread lock and wakes waiters on their own loops.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from types import TracebackType


class ConcurrencyLimiter:
    def __init__(self, limit: int, name: str = "") -> None:
        if limit < 1:
            raise ValueError("a concurrency limit must be at least 1")
        self.limit = limit
        self.name = name
        self._in_use = 0
        self._peak = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def peak(self) -> int:
        """Most slots ever held at once (tests check it against the limit)."""
        return self._peak

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._in_use < self.limit and not self._waiters:
                self._in_use += 1
                self._peak = max(self._peak, self._in_use)
                return
            fut: asyncio.Future[None] = loop.create_future()
            entry = (loop, fut)
            self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                    raise
            # the slot was handed over; if the grant already landed, give it back
            if fut.done() and not fut.cancelled():
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if fut.done():
                    continue
                # hand the slot straight to the waiter: in_use stays the same
                try:
                    loop.call_soon_threadsafe(self._grant, fut)
                except RuntimeError:  # that loop is closed; try the next waiter
                    continue
                return
            self._in_use -= 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # cancelled between hand-over and now: pass the slot on
            self.release()
        else:
            fut.set_result(None)

    async def __aenter__(self) -> ConcurrencyLimiter:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


_registry: dict[str, ConcurrencyLimiter] = {}
_registry_lock = threading.Lock()


def shared_limiter(key: str, limit: int) -> ConcurrencyLimiter:
    """One limiter per key (e.g. ``erp:123456_SB1``) for the whole process, so every client of
    the same account shares the same slots."""
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None or limiter.limit != limit:
            limiter = _registry[key] = ConcurrencyLimiter(limit, name=key)
        return limiter
