"""The micro-batcher between the consumer loop and the batch process."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.batcher import MicroBatcher


async def _drain(batcher: MicroBatcher[int], n: int, pauses: list[int]) -> list[list[int]]:
    """Consume n items; ``pauses`` makes the consumer yield that many times between batches."""
    batches: list[list[int]] = []
    got = 0
    while got < n:
        batch = await batcher.get()
        batches.append(batch)
        got += len(batch)
        for _ in range(pauses[len(batches) % len(pauses)]):
            await asyncio.sleep(0)
    return batches


@given(
    n=st.integers(1, 300),
    max_size=st.integers(1, 50),
    pauses=st.lists(st.integers(0, 5), min_size=1, max_size=5),
)
def test_every_item_once_in_order_and_batches_bounded(
    n: int, max_size: int, pauses: list[int]
) -> None:
    async def run() -> list[list[int]]:
        batcher: MicroBatcher[int] = MicroBatcher(max_size)

        async def produce() -> None:
            for i in range(n):
                await batcher.put(i)

        producer = asyncio.create_task(produce())
        batches = await _drain(batcher, n, pauses)
        await producer
        return batches

    batches = asyncio.run(run())
    assert [i for b in batches for i in b] == list(range(n))
    assert all(1 <= len(b) <= max_size for b in batches)


def test_a_busy_stream_fills_batches_while_one_is_processed() -> None:
    async def run() -> list[int]:
        batcher: MicroBatcher[int] = MicroBatcher(10)
        for i in range(3):
            await batcher.put(i)
        first = await batcher.get()  # what was there: no waiting for a full batch
        for i in range(3, 30):  # arrives while `first` is processed; put waits when full
            asyncio.get_running_loop().call_soon(asyncio.ensure_future, batcher.put(i))
        await asyncio.sleep(0.01)
        second = await batcher.get()
        return [len(first), len(second)]

    assert asyncio.run(run()) == [3, 10]


def test_linger_waits_for_more_items_before_a_partial_batch() -> None:
    async def run() -> tuple[list[int], float]:
        batcher: MicroBatcher[int] = MicroBatcher(100, linger_s=0.05)
        await batcher.put(1)
        started = asyncio.get_running_loop().time()
        batch = await batcher.get()
        return batch, asyncio.get_running_loop().time() - started

    batch, waited = asyncio.run(run())
    assert batch == [1]
    assert waited >= 0.04


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(0)
