"""S1's other user (docs/reliability.md): a few sockets, each pinging every 100 ms, while the
server is abused, in a process of its own. Several sockets because the abuse's steps are
short: with one socket (at most 10 pongs a second within the per-socket message limit) a
run had about 40 pongs during the abuse, and its "p99" was its slowest pong.

A process of its own because the runner is the abuser too: it builds a 10 MB body, sends
floods and creates rows in the same Python process, and a thread of that process waits for
the GIL while the runner holds it (up to Python's 5 ms switch interval, or for as long as
one C call runs, such as json.dumps of 10 MB). In a thread, the bystander timed the runner
as much as the server: its slowest pongs came in the steps where the runner itself worked
hardest. A separate process times only what a real other user would feel: the server.

This module imports nothing of Django's, so a spawned process starts quickly and needs no
settings. Pongs are stamped with time.monotonic(), one clock for every process of a Linux
machine, so the runner can put each one in the abuse step that was under way.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

PING_EVERY = 0.1  # half the per-socket message limit (WS_MAX_MESSAGES_PER_SECOND, 20)

# Steps that are not the abuse: before every socket has its welcome, the pongs of the
# quiet server (the reference), a pause after the abuse, and the control (busy_cores).
WARM_UP, BASELINE, SETTLE, CONTROL = "warm-up", "baseline", "settle", "control"
NOT_ABUSE = (WARM_UP, BASELINE, SETTLE, CONTROL)


async def _ping(
    url: str, headers: dict[str, str], stop: Any, welcomed: Any, offset: float
) -> tuple[list[tuple[float, float]], str | None]:
    """One socket: a ping every PING_EVERY, `offset` into the period (the sockets take
    turns: pings sent together would time each other's pongs), until `stop` is set. Each
    pong's (sent at, seconds) kept, and what ended the socket early, if anything."""
    from websockets.asyncio.client import connect

    samples: list[tuple[float, float]] = []
    try:
        async with connect(url, additional_headers=headers) as ws:
            await asyncio.wait_for(ws.recv(), 30)  # the welcome
            await welcomed()
            await asyncio.sleep(offset)
            for number in itertools.count():
                await asyncio.sleep(PING_EVERY)
                if stop.is_set():
                    return samples, None
                sent = time.monotonic()
                await ws.send(json.dumps({"type": "ping", "ref": number}))
                while json.loads(await asyncio.wait_for(ws.recv(), 30)).get("ref") != number:
                    pass  # a push of its own user's: not the pong
                samples.append((sent, time.monotonic() - sent))
    except Exception as exc:  # a bystander thrown off is a finding; its pongs still count
        return samples, f"{type(exc).__name__}: {exc}"
    return samples, None


def _run(
    url: str, headers: dict[str, str], sockets: int, stop: Any, ready: Any, results: Connection
) -> None:
    """Ping on `sockets` sockets until `stop` is set, `ready` set once all have their
    welcome; send back [(sent at, seconds to the pong), ...] and the problems."""
    left = sockets

    async def welcomed() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            ready.set()

    async def everyone() -> list[Any]:
        return await asyncio.gather(
            *(_ping(url, headers, stop, welcomed, n * PING_EVERY / sockets) for n in range(sockets))
        )

    samples: list[tuple[float, float]] = []
    problems = []
    for kept, problem in asyncio.run(everyone()):
        samples.extend(kept)
        if problem:
            problems.append(problem)
    results.send((samples, "; ".join(problems) or None))


def _spin(seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


def busy_cores(processes: int, seconds: float) -> None:
    """Keep `processes` cores busy for `seconds` with pure Python loops, and nothing else:
    the control of S1. On two cores the abuser (the runner), PostgreSQL and the server
    share the CPUs, so a pong waits for a core during any abuse; the bystander's pongs
    while only these loops run, with no traffic to the server at all, say how much of the
    slowdown the machine alone explains."""
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, args=(seconds,)) for _ in range(processes)]
    for spinner in spinners:
        spinner.start()
    for spinner in spinners:
        spinner.join()


class Bystander:
    """start() (returns once every socket has its welcome: the baseline begins), mark the
    abuse's steps as they begin (step()), finish(); then samples_by_step holds each step's
    pong times in seconds."""

    def __init__(self, url: str, headers: dict[str, str], *, sockets: int = 5) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop, self._ready = context.Event(), context.Event()
        self._results, self._child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_run,
            args=(url, headers, sockets, self._stop, self._ready, self._child_end),
            daemon=True,
        )
        self._steps: list[tuple[float, str]] = [(0.0, WARM_UP)]
        self.samples_by_step: dict[str, list[float]] = {}
        self.problem: str | None = None

    def start(self) -> None:
        self._process.start()
        self._child_end.close()  # the child's now: its exit without a word is EOF here
        self._ready.wait(60)  # if never, finish() reports what happened
        self.step(BASELINE)

    def step(self, name: str) -> None:
        self._steps.append((time.monotonic(), name))

    def finish(self) -> None:
        self._stop.set()
        samples: list[tuple[float, float]] = []
        try:
            if self._results.poll(60):
                samples, self.problem = self._results.recv()
            else:
                self.problem = "no answer from the bystander's process in 60 s"
        except EOFError:
            self.problem = f"the bystander's process ended (exit code {self._process.exitcode})"
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
        for sent, took in samples:
            step = [name for began, name in self._steps if began <= sent][-1]
            self.samples_by_step.setdefault(step, []).append(took)

    def during_abuse(self) -> list[float]:
        return [
            took
            for step, times in self.samples_by_step.items()
            if step not in NOT_ABUSE
            for took in times
        ]

    def slowest_by_step(self) -> str:
        """Each abuse step in the order it ran: its slowest pong (how many pongs)."""
        steps = [name for _, name in self._steps if name not in NOT_ABUSE]
        return ", ".join(
            f"{step} {max(self.samples_by_step[step]) * 1000:.1f} ms "
            f"({len(self.samples_by_step[step])})"
            if step in self.samples_by_step
            else f"{step} (no pong)"
            for step in steps
        )
