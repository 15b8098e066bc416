"""Natural micro-batching between the consumer loop and the batch process.

faust's ``take_events(n, within)`` waits the whole window before each batch unless n events
arrived, and takes no new events while a batch is being processed: every click pays the window,
and at high rates the batches stay as small as what one window gathers. Here the consumer loop
keeps filling the next batch while the current one runs, and a batch starts as soon as the
previous one is done: one click when the stream is quiet (no waiting), up to ``max_size`` when
it is busy (fewer, larger batches: the throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """An ordered buffer of at most ``max_size`` items: ``put`` waits while it is full.

    ``get`` returns everything buffered (oldest first, at most ``max_size``) once there is at
    least one item; with ``linger_s`` > 0 it first waits up to that long for a full batch.
    One producer task and one consumer task.
    """

    def __init__(self, max_size: int, linger_s: float = 0.0) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.linger_s = linger_s
        self._items: list[T] = []
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    async def put(self, item: T) -> None:
        while len(self._items) >= self.max_size:  # back-pressure on the consumer loop
            await self._space.wait()
        self._items.append(item)
        self._nonempty.set()
        if len(self._items) >= self.max_size:
            self._full.set()
            self._space.clear()

    async def get(self) -> list[T]:
        await self._nonempty.wait()
        if self.linger_s > 0 and not self._full.is_set():
            with contextlib.suppress(TimeoutError):  # linger over: take what is there
                await asyncio.wait_for(self._full.wait(), self.linger_s)
        batch, self._items = self._items, []
        self._nonempty.clear()
        self._full.clear()
        self._space.set()
        return batch
