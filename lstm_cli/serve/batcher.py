"""Micro-batching: texts of requests that arrive together are predicted in one engine call.

One task on the event loop takes what is waiting and hands it to a free engine slot (lstm_cli.serve.engines),
run on a thread of its own so the loop keeps reading requests meanwhile; each request then gets its rows.
While every slot is busy, new requests queue and go together into the next batch: batches grow with load by
themselves. With a slot free, the first waiting request waits at most `max_wait` seconds for company (and not
at all once `max_texts` texts are waiting)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lstm_cli.serve.metrics import Metrics

Run = Callable[[list[str]], np.ndarray]  # texts -> probabilities, one row per text


class MicroBatcher:
    def __init__(
        self, slots: Sequence[Run], *, max_texts: int = 1024, max_wait: float = 0.002, metrics: Metrics | None = None
    ):
        self.max_texts = max_texts
        self.max_wait = max_wait
        self.metrics = metrics
        self._slots = list(slots)  # each called by one thread at a time
        self._waiting: deque[tuple[Sequence[str], asyncio.Future]] = deque()
        self._waiting_texts = 0
        self._running: set[asyncio.Task] = set()
        self._threads = ThreadPoolExecutor(len(self._slots), thread_name_prefix="lstm-cli-batch")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start batching on the running event loop."""
        self._arrived, self._full = asyncio.Event(), asyncio.Event()
        self._free: asyncio.Queue[Run] = asyncio.Queue()
        for slot in self._slots:
            self._free.put_nowait(slot)
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop(self, timeout: float = 0.5) -> None:
        """Answer every waiting request and finish the batches in progress (for at most `timeout` seconds: by
        now the server has given requests their grace time), then stop. A batch still running in an engine
        process is abandoned; closing the engine pool ends it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._waiting or self._running) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities for `texts` (one row each), computed along with other requests' texts."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, future))
        self._waiting_texts += len(texts)
        self._arrived.set()
        if self._waiting_texts >= self.max_texts:
            self._full.set()
        return await future

    async def _dispatch(self) -> None:
        while True:
            slot = await self._free.get()
            await self._arrived.wait()
            if self._waiting_texts < self.max_texts and self.max_wait > 0:
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
                except TimeoutError:
                    pass
            batch, texts = self._take()
            if not batch:
                self._free.put_nowait(slot)
                continue
            task = asyncio.get_running_loop().create_task(self._run(slot, batch, texts))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, slot: Run, batch: list[tuple[Sequence[str], asyncio.Future]], texts: list[str]) -> None:
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(self._threads, slot, texts)
        except Exception as e:  # a bug, not a bad request: every request of this batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        finally:
            self._free.put_nowait(slot)
        if self.metrics is not None:
            self.metrics.batch(len(texts), len(batch))
        start = 0
        for request_texts, future in batch:
            rows = probabilities[start : start + len(request_texts)]
            start += len(request_texts)
            if not future.done():  # its client may have gone
                future.set_result(rows)

    def _take(self) -> tuple[list[tuple[Sequence[str], asyncio.Future]], list[str]]:
        """Waiting requests up to max_texts texts (at least one request, however many texts it has)."""
        batch, texts = [], []
        while self._waiting and (not texts or len(texts) + len(self._waiting[0][0]) <= self.max_texts):
            request_texts, future = self._waiting.popleft()
            self._waiting_texts -= len(request_texts)
            if future.done():  # cancelled while it waited
                continue
            batch.append((request_texts, future))
            texts.extend(request_texts)
        if not self._waiting:
            self._arrived.clear()
        if self._waiting_texts < self.max_texts:
            self._full.clear()
        return batch, texts
