"""One micro-batcher: coalesces concurrent items into single calls of a blocking batch function."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from service.metrics import BATCH_SIZE, STAGE_LATENCY

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """The batcher's bounded queue is full: the caller should answer 503 with Retry-After."""


class MicroBatcher(Generic[T, R]):
    """Collects items until `max_batch` or `max_wait_ms` after the first one, then runs `fn(batch)`
    on one worker thread (off the event loop; one forward pass at a time owns the cores)."""

    def __init__(
        self, fn: Callable[[Sequence[T]], Sequence[R]], max_batch: int, max_wait_ms: float, max_queue: int, name: str
    ) -> None:
        self._fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] = asyncio.Queue(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._task: asyncio.Task | None = None
        self._name = name
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Queue all items (all or none, so a request is never half-accepted) and await their results."""
        loop = asyncio.get_running_loop()
        if self._queue.maxsize and self._queue.qsize() + len(items) > self._queue.maxsize:
            raise QueueFull(f"{self._name} queue is full ({self._queue.qsize()} waiting)")
        futures = []
        for item in items:
            fut: asyncio.Future[R] = loop.create_future()
            self._queue.put_nowait((item, fut, time.perf_counter()))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            live = [b for b in batch if not b[1].done()]  # skip callers that went away
            if not live:
                continue
            now = time.perf_counter()
            for _, _, queued in live:
                STAGE_LATENCY.labels(self._name, "queue_wait").observe(now - queued)
            BATCH_SIZE.observe(len(live))
            self.batches += 1
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [b[0] for b in live])
            except Exception as e:  # the model failed: every caller in the batch hears of it
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                STAGE_LATENCY.labels(self._name, "model").observe(time.perf_counter() - now)
            for (_, fut, _), r in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(r)
