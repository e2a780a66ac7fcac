"""The server's micro-batcher: concurrent requests share calls, each gets its own results back."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tuneforge.deploy.server.batcher import BatcherBusy, BatcherClosed, MicroBatcher


class Recorder:
    """A batched function that squares numbers and remembers every call."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * x for x in items]


def run(coro):
    return asyncio.run(coro)


async def _with(batcher: MicroBatcher, body):
    await batcher.start()
    try:
        return await body()
    finally:
        await batcher.close()


def test_concurrent_requests_share_calls_and_get_their_own_results():
    fn = Recorder(delay=0.02)
    batcher = MicroBatcher(fn, max_batch=8, max_wait=0.05)

    async def body():
        return await asyncio.gather(*[batcher.submit([i]) for i in range(20)])

    results = run(_with(batcher, body))
    assert results == [[i * i] for i in range(20)]
    assert all(len(call) <= 8 for call in fn.calls)
    assert sum(len(call) for call in fn.calls) == 20
    assert len(fn.calls) <= 4  # 20 single-item requests, at most 8 per call: 3 calls, 4 at worst
    assert batcher.stats.batches == len(fn.calls) and batcher.stats.items == 20
    assert batcher.stats.requests == 20 and batcher.stats.largest == 8
    assert fn.threads and not any(name == "MainThread" for name in fn.threads)


def test_multi_item_requests_keep_their_order_and_slices():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=16, max_wait=0.05)

    async def body():
        return await asyncio.gather(
            batcher.submit([1, 2, 3]),
            batcher.submit([4]),
            batcher.submit([5, 6]),
            batcher.submit([]),
        )

    assert run(_with(batcher, body)) == [[1, 4, 9], [16], [25, 36], []]
    assert fn.calls == [[1, 2, 3, 4, 5, 6]]


def test_a_request_larger_than_the_batch_is_served_whole():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=4, max_wait=0.01)

    async def body():
        return await batcher.submit(list(range(10)))

    assert run(_with(batcher, body)) == [x * x for x in range(10)]
    assert fn.calls == [list(range(10))]


def test_a_lone_request_waits_no_longer_than_max_wait():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=64, max_wait=0.01)

    async def body():
        start = time.perf_counter()
        result = await batcher.submit([3])
        return result, time.perf_counter() - start

    result, elapsed = run(_with(batcher, body))
    assert result == [9]
    assert elapsed < 0.5


def test_a_failing_batch_fails_its_requests_only_and_the_batcher_keeps_going():
    fn = Recorder(fail_on=13)
    batcher = MicroBatcher(fn, max_batch=8, max_wait=0.05)

    async def body():
        first = await asyncio.gather(
            batcher.submit([13]), batcher.submit([2]), return_exceptions=True
        )
        later = await batcher.submit([4])
        return first, later

    first, later = run(_with(batcher, body))
    assert all(isinstance(r, ValueError) for r in first)  # they shared the failing call
    assert later == [16]


def test_the_event_loop_keeps_running_while_a_batch_computes():
    fn = Recorder(delay=0.3)
    batcher = MicroBatcher(fn, max_batch=8, max_wait=0.001)

    async def body():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit([1])
        task.cancel()
        return ticks

    assert run(_with(batcher, body)) >= 10


def test_a_caller_that_gives_up_is_skipped():
    fn = Recorder(delay=0.2)
    batcher = MicroBatcher(fn, max_batch=1, max_wait=0.0)

    async def body():
        busy = asyncio.create_task(batcher.submit([1]))  # occupies the worker
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = await batcher.submit([3])
        return await busy, kept

    assert run(_with(batcher, body)) == ([1], [9])
    assert [2] not in fn.calls


def test_too_many_pending_items_is_busy():
    fn = Recorder(delay=0.2)
    batcher = MicroBatcher(fn, max_batch=4, max_wait=0.0, max_pending=5)

    async def body():
        first = asyncio.create_task(batcher.submit([1, 2, 3, 4]))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherBusy):
            await batcher.submit([5, 6])
        ok = await batcher.submit([5])
        return await first, ok

    assert run(_with(batcher, body)) == ([1, 4, 9, 16], [25])


def test_closing_fails_waiting_requests_and_refuses_new_ones():
    fn = Recorder(delay=0.2)
    batcher = MicroBatcher(fn, max_batch=1, max_wait=0.0)

    async def body():
        await batcher.start()
        running = asyncio.create_task(batcher.submit([1]))
        queued = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0.05)
        await batcher.close()
        results = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(BatcherClosed):
            await batcher.submit([3])
        return results

    results = run(body())
    assert all(isinstance(r, BatcherClosed) for r in results)


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)
