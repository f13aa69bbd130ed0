"""LeanQueue (taskhub/lean_queue.py) behaves as asyncio.Queue does for what Daphne and the
channel layer ask of it: first in, first out; a get() waits for the next put; a get()
that is cancelled takes nothing with it."""

from __future__ import annotations

import asyncio

import pytest

from taskhub.lean_queue import LeanQueue


async def waiting_get(queue: LeanQueue) -> asyncio.Future:
    """A get() that has started and is waiting on the queue."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    return getter


async def test_items_come_out_in_the_order_they_went_in():
    queue = LeanQueue()
    for item in range(100):
        queue.put_nowait(item)
    assert queue.qsize() == 100
    assert [await queue.get() for _ in range(100)] == list(range(100))
    assert queue.empty() and queue.qsize() == 0


async def test_a_get_waits_for_the_next_put():
    queue = LeanQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    queue.put_nowait("frame")
    assert await asyncio.wait_for(getter, 1) == "frame"


async def test_an_empty_queue_says_so_without_waiting():
    queue = LeanQueue()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(1)
    assert queue.get_nowait() == 1


async def test_waiting_gets_are_served_in_the_order_they_came():
    queue = LeanQueue()
    first = await waiting_get(queue)
    second = await waiting_get(queue)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == ["a", "b"]


async def test_a_cancelled_get_loses_no_item_put_after_it():
    queue = LeanQueue()
    getter = await waiting_get(queue)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    queue.put_nowait("kept")
    assert await asyncio.wait_for(queue.get(), 1) == "kept"


async def test_a_get_woken_then_cancelled_hands_its_item_to_the_next_waiter():
    queue = LeanQueue()
    woken = await waiting_get(queue)
    other = await waiting_get(queue)
    queue.put_nowait("only")  # wakes `woken`, which is cancelled before it runs again
    woken.cancel()
    with pytest.raises(asyncio.CancelledError):
        await woken
    assert await asyncio.wait_for(other, 1) == "only"
    assert queue.empty()
