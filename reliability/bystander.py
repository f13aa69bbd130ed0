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


async def _ping(
    url: str, headers: dict[str, str], stop: Any, offset: float
) -> list[tuple[float, float]]:
    """One socket: a ping every PING_EVERY, `offset` into the period (the sockets take
    turns: pings sent together would time each other's pongs), until `stop` is set; each
    pong's time kept."""
    from websockets.asyncio.client import connect

    samples: list[tuple[float, float]] = []
    async with connect(url, additional_headers=headers) as ws:
        await asyncio.wait_for(ws.recv(), 30)  # the welcome
        await asyncio.sleep(offset)
        for number in itertools.count():
            await asyncio.sleep(PING_EVERY)
            if stop.is_set():
                return samples
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "ping", "ref": number}))
            while json.loads(await asyncio.wait_for(ws.recv(), 30)).get("ref") != number:
                pass  # a push of its own user's: not the pong
            samples.append((sent, time.monotonic() - sent))
    return samples


def _run(url: str, headers: dict[str, str], sockets: int, stop: Any, results: Connection) -> None:
    """Ping on `sockets` sockets until `stop` is set; send back [(sent_at, seconds to the
    pong), ...] and any problem (a bystander thrown off is a finding)."""

    async def everyone() -> list[Any]:
        return await asyncio.gather(
            *(_ping(url, headers, stop, n * PING_EVERY / sockets) for n in range(sockets)),
            return_exceptions=True,
        )

    samples: list[tuple[float, float]] = []
    problems = []
    for outcome in asyncio.run(everyone()):
        if isinstance(outcome, BaseException):
            problems.append(f"{type(outcome).__name__}: {outcome}")
        else:
            samples.extend(outcome)
    results.send((samples, "; ".join(problems) or None))


# The step of the control (busy_cores): the machine's own share of a slow pong.
CONTROL = "control"


def _spin(until: float) -> None:
    while time.monotonic() < until:
        pass


def busy_cores(processes: int, seconds: float) -> None:
    """Keep `processes` cores busy for `seconds` with pure Python loops, and nothing else:
    the control of S1. On two cores the abuser (the runner), PostgreSQL and the server
    share the CPUs, so a pong waits for a core during any abuse; the bystander's pongs
    while only these loops run, with no traffic to the server at all, say how much of the
    slowdown the machine alone explains."""
    context = multiprocessing.get_context("spawn")
    until = time.monotonic() + seconds
    spinners = [context.Process(target=_spin, args=(until,)) for _ in range(processes)]
    for spinner in spinners:
        spinner.start()
    for spinner in spinners:
        spinner.join()


class Bystander:
    """Start, mark the abuse's steps as they begin (step()), finish(); then samples_by_step
    holds each step's pong times in seconds ("baseline" before the first step)."""

    def __init__(self, url: str, headers: dict[str, str], *, sockets: int = 5) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_run, args=(url, headers, sockets, self._stop, child_end), daemon=True
        )
        self._steps: list[tuple[float, str]] = [(0.0, "baseline")]
        self.samples_by_step: dict[str, list[float]] = {}
        self.problem: str | None = None

    def start(self) -> None:
        self._process.start()

    def step(self, name: str) -> None:
        self._steps.append((time.monotonic(), name))

    def finish(self) -> None:
        self._stop.set()
        if self._results.poll(60):
            samples, self.problem = self._results.recv()
        else:
            samples, self.problem = [], "no answer from the bystander's process in 60 s"
        self._process.join(timeout=10)
        for sent, took in samples:
            step = [name for began, name in self._steps if began <= sent][-1]
            self.samples_by_step.setdefault(step, []).append(took)

    def during_abuse(self) -> list[float]:
        return [
            took
            for step, times in self.samples_by_step.items()
            if step not in ("baseline", CONTROL)
            for took in times
        ]

    def slowest_by_step(self) -> str:
        return ", ".join(
            f"{step} {max(times) * 1000:.1f} ms ({len(times)})"
            for step, times in self.samples_by_step.items()
            if step not in ("baseline", CONTROL)
        )
