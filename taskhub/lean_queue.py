"""An unbounded FIFO queue for asyncio that costs next to nothing while it is empty.

Every open WebSocket holds two queues for its whole life: Daphne's application input
queue (the client's frames to the consumer) and the channel layer's queue of its channel
(pushes to the socket). Both are empty almost all the time. asyncio.Queue allocates four
deques when it is made (its items, its waiting getters and putters, and the event join()
waits on), 760 bytes each however empty: about 6 KiB per socket, a fifth of what a socket
costs the web process (docs/benchmarks.md, "Sockets: memory per socket").

LeanQueue offers the part of asyncio.Queue those two callers use (put_nowait, get,
get_nowait, qsize, empty) and holds a deque only while it holds items, and a list of
waiting getters only while someone waits. It has no maximum size (neither caller sets
one) and no task_done/join.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class LeanQueue:
    # No __len__ on purpose: Daphne tests the queue itself for truth (`if
    # self.application_queue:`) before it sends http.disconnect, so it must stay true.
    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        # Futures of the get() calls waiting, oldest first. A list, not a deque: a socket's
        # reader waits on its queue nearly all the time, with one getter in it.
        self._getters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._wake_next_getter()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None  # the deque's block goes with it
        return item

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # does nothing if a put already woke it
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                    if not self._getters:
                        self._getters = None
                # A put may have woken this getter just before it was cancelled: the item
                # is still here, so the next waiter must have it (as asyncio.Queue does).
                if self._items:
                    self._wake_next_getter()
                raise
        return self.get_nowait()

    def _wake_next_getter(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None
