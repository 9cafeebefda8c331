from __future__ import annotations

import asyncio
import threading

import pytest

from connectors.limits import ConcurrencyLimiter, shared_limiter


def test_limit_holds_across_threads_and_event_loops():
    limiter = ConcurrencyLimiter(3)
    active = 0
    peak = 0
    lock = threading.Lock()

    async def work() -> None:
        nonlocal active, peak
        async with limiter:
            with lock:
                active += 1
                peak = max(peak, active)
            await asyncio.sleep(0.01)
            with lock:
                active -= 1

    async def many() -> None:
        await asyncio.gather(*(work() for _ in range(40)))

    threads = [threading.Thread(target=lambda: asyncio.run(many())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3  # never above the limit, and the limit was reached
    assert limiter.in_use == 0


def test_cancelled_waiters_do_not_leak_slots():
    limiter = ConcurrencyLimiter(1)

    async def scenario() -> None:
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        limiter.release()
        assert limiter.in_use == 0
        async with limiter:
            assert limiter.in_use == 1

    asyncio.run(scenario())
    assert limiter.in_use == 0


def test_shared_limiter_is_one_per_key():
    a = shared_limiter("erp:X", 5)
    assert shared_limiter("erp:X", 5) is a
    assert shared_limiter("erp:Y", 5) is not a
