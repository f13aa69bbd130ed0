"""What the benchmarks talk to the stack with: a WebSocket client that timestamps every frame
on arrival, and a one-thread executor for the Django ORM (never called on the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from bench.stack import BenchError

T = TypeVar("T")
Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


class Socket:
    """One open /ws connection. A reader task records `(perf_counter(), frame)` for every
    frame as it arrives, so a timing never includes the time we took to look at it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, Frame]] = []
        self._waiters: list[tuple[Predicate, asyncio.Future[tuple[float, Frame]]]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                arrived = time.perf_counter()
                frame = json.loads(message)
                self.frames.append((arrived, frame))
                for waiter in list(self._waiters):
                    predicate, future = waiter
                    if not future.done() and predicate(frame):
                        future.set_result((arrived, frame))
                        self._waiters.remove(waiter)
        except ConnectionClosed:
            pass
        finally:
            closed = self.describe_close()
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(BenchError(f"socket closed ({closed})"))
            self._waiters.clear()

    def describe_close(self) -> str:
        last = self.frames[-1][1] if self.frames else None
        return f"close code {self.ws.close_code} {self.ws.close_reason!r}, last frame {last}"

    async def wait_for(self, predicate: Predicate, *, timeout: float) -> tuple[float, Frame]:
        """The first frame (already received or still to come) that matches, with its
        arrival time; BenchError after `timeout` seconds or when the socket closes."""
        for arrived, frame in self.frames:
            if predicate(frame):
                return arrived, frame
        if self._reader.done():
            raise BenchError(f"socket closed ({self.describe_close()})")
        future: asyncio.Future[tuple[float, Frame]] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BenchError(
                f"no matching frame within {timeout:g} s ({len(self.frames)} frames received)"
            ) from None

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError, ConnectionClosed, OSError):
            await asyncio.wait_for(self.ws.close(), 5)
        self._reader.cancel()


async def open_socket(
    base_url: str, token: str, *, query: str = "", timeout: float = 15.0
) -> tuple[Socket, Frame]:
    """Connect to /ws as a browser on our origin would and wait for `welcome`."""
    url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
    if query:
        url += f"&{query}"
    ws = await connect(
        url,
        origin=Origin(base_url),
        open_timeout=timeout,
        close_timeout=2,
        ping_interval=None,
        max_size=2**22,
    )
    socket = Socket(ws)
    try:
        _, welcome = await socket.wait_for(lambda f: f.get("type") == "welcome", timeout=timeout)
    except BenchError as exc:
        await socket.close()
        raise BenchError(f"no welcome frame: {exc}") from None
    return socket, welcome


def task_update(task_id: str, *statuses: str) -> Predicate:
    return lambda f: (
        f.get("type") == "task.updated"
        and f["data"].get("task_id") == task_id
        and f["data"].get("status") in statuses
    )


class Db:
    """Runs ORM code in one dedicated thread: Django refuses the sync ORM on an event loop,
    and one thread keeps one connection (no pool of idle connections to the bench DB)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-db")

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def close(self) -> None:
        from django.db import connections

        self._pool.submit(connections.close_all).result(timeout=10)
        self._pool.shutdown(wait=True)


async def rss_bytes(pid: int, *, samples: int = 5, interval: float = 0.1) -> int:
    """Median resident set size of a process over a few samples."""
    process = psutil.Process(pid)
    values = []
    for _ in range(samples):
        values.append(process.memory_info().rss)
        await asyncio.sleep(interval)
    return int(statistics.median(values))
