"""A small async micro-batcher: concurrent requests share one forward pass.

Requests put their items on a queue and await a future. One worker takes the first waiting
request, then keeps taking more until it has `max_batch` items or `max_wait` seconds have passed,
runs the function once on all their items in a worker thread (so the event loop keeps serving),
and hands each request its own slice of the results. A failure fails only that batch's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherBusy(Exception):
    """More items are waiting than the batcher accepts: the caller should answer 503."""


class BatcherClosed(Exception):
    """The batcher was shut down before the request was served."""


@dataclass
class _Job:
    items: list
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0  # calls of the batched function
    items: int = 0  # items passed through it
    requests: int = 0  # requests served
    largest: int = 0  # most items in one call
    sizes: list[int] = field(default_factory=list, repr=False)  # last few batch sizes

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "requests": self.requests,
            "largest_batch": self.largest,
        }


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_pending: int = 4096,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._pending = 0  # items queued or being computed
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tuneforge-batch")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: list[T]) -> list[R]:
        """The function's results for `items`, computed together with other waiting requests."""
        if self._queue is None or self._worker is None or self._worker.done():
            raise BatcherClosed("the batcher is not running")
        if not items:
            return []
        if self._pending + len(items) > self.max_pending:
            raise BatcherBusy(f"{self._pending} items are already waiting")
        future = asyncio.get_running_loop().create_future()
        self._pending += len(items)
        try:
            self._queue.put_nowait(_Job(list(items), future))
            return await future
        finally:
            self._pending -= len(items)

    async def _collect(self) -> list[_Job]:
        """The first waiting job plus whatever else arrives within `max_wait`, up to `max_batch`."""
        assert self._queue is not None
        jobs = [await self._queue.get()]
        n = len(jobs[0].items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        job = await self._queue.get()
                except TimeoutError:
                    break
            jobs.append(job)
            n += len(job.items)
        return [j for j in jobs if not j.future.done()]  # a caller that gave up is skipped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            items = [x for job in jobs for x in job.items]
            try:
                results = await loop.run_in_executor(self._executor, self._fn, items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"batched function gave {len(results)} results for {len(items)} items"
                    )
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("the server is shutting down"))
                raise
            except Exception as e:  # noqa: BLE001 - handed to the callers, who answer with an error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self._record(len(jobs), len(items))
            start = 0
            for job in jobs:
                end = start + len(job.items)
                if not job.future.done():
                    job.future.set_result(results[start:end])
                start = end

    def _record(self, requests: int, items: int) -> None:
        s = self.stats
        s.batches += 1
        s.items += items
        s.requests += requests
        s.largest = max(s.largest, items)
        s.sizes = [*s.sizes[-99:], items]
