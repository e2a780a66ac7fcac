"""The queue of generation requests in front of the model: dynamic batching.

Requests wait here in arrival order. While the model is free, one worker task takes the first
waiting request plus the others that can share its batch (same stop tokens, no seed of their
own), up to `max_batch`, after giving concurrent arrivals `wait` seconds to join, and has them
decoded together in the one generation thread (so the event loop keeps answering). A request that
asks for a `seed` is decoded alone: its sampling owns the global random generator, so it answers
exactly as `tuneforge chat` with that seed does. `max_batch` 1 is the one-at-a-time server.

Batches do not merge mid-decoding (transformers' `generate` takes its rows at the start): a
request arriving during a batch waits for it to end. Each row's answer is delivered as soon as
that row ends, so the wait is only for requests not yet started.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class GenerationJob:
    """One request's generation: what to decode, and where its answer goes."""

    prompt: Any  # engine.Prompt
    params: Any  # engine.GenerationParams
    future: asyncio.Future
    streamer: Any | None = None  # AsyncTextIteratorStreamer of a streamed request
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def batchable(self) -> bool:
        return self.params.seed is None

    @property
    def key(self) -> tuple[int, ...]:
        """Requests with the same key can be decoded in one batch."""
        return tuple(self.prompt.stop_ids)

    def resolve(self, result: Any) -> None:
        """Hands the answer over from the generation thread (once; later calls do nothing)."""
        self.future.get_loop().call_soon_threadsafe(_settle, self.future, result, None)

    def fail(self, error: BaseException) -> None:
        self.future.get_loop().call_soon_threadsafe(_settle, self.future, None, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class GenerationQueue:
    """Waiting generation requests, decoded in batches by `decode(jobs)` in one worker thread."""

    def __init__(
        self,
        decode: Callable[[list[GenerationJob]], None],
        *,
        max_batch: int,
        wait: float,
        on_closed: Callable[[], BaseException],
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._decode = decode
        self.max_batch = max_batch
        self.wait = wait
        self._on_closed = on_closed  # the error a request left waiting at shutdown gets
        self._pending: deque[GenerationJob] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tuneforge-generate")
        self.running = 0  # requests in the batch being decoded
        self.batches = 0
        self.largest = 0

    @property
    def waiting(self) -> int:
        """Requests that must wait for a batch to end: all those not yet decoding while one
        runs; past the next batch's `max_batch` while the model is free (the others are only
        gathering for it)."""
        if self.running:
            return len(self._pending)
        return max(0, len(self._pending) - self.max_batch)

    def submit(self, job: GenerationJob) -> asyncio.Future:
        """Queues `job`; its future receives the Generation (or the error)."""
        if self._worker is None:  # started by the first request, on the server's event loop
            self._arrived = asyncio.Event()
            self._worker = asyncio.create_task(self._run(), name="generation-queue")
        self._pending.append(job)
        assert self._arrived is not None
        self._arrived.set()
        return job.future

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(self._on_closed())
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _take(self) -> list[GenerationJob]:
        """The first waiting request and those that can join it, in arrival order."""
        first = self._pending.popleft()
        batch = [first]
        if not first.batchable or self.max_batch == 1:
            return batch
        kept: deque[GenerationJob] = deque()
        while self._pending:
            job = self._pending.popleft()
            if len(batch) < self.max_batch and job.batchable and job.key == first.key:
                batch.append(job)
            else:
                kept.append(job)
        self._pending = kept
        return batch

    def _drop_abandoned(self) -> None:
        """A streamed request whose client left before its batch began is not decoded."""
        for job in [j for j in self._pending if j.cancel.is_set() or j.future.done()]:
            self._pending.remove(job)
            if job.streamer is not None:
                job.streamer.on_finalized_text("", stream_end=True)

    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.max_batch > 1 and len(self._pending) < self.max_batch and self.wait > 0:
                await asyncio.sleep(self.wait)  # let requests sent at the same time join
                self._drop_abandoned()
                if not self._pending:
                    continue
            batch = self._take()
            self.running = len(batch)
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            try:
                await loop.run_in_executor(self._executor, self._decode, batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - `decode` fails its jobs; this is a backstop
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                self.running = 0
