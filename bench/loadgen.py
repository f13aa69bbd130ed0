"""WebSocket load from separate client processes, so the client's own CPU does not come
out of the benchmark's event loop (or look like the server's): each process holds its
share of the sockets and answers commands from the harness over a pipe.

A socket here is one user's connection, kept across reconnects: it remembers every event
id it has seen (to count losses and duplicates), the newest one (to reconnect with
`last_event_id`, as a client does), and when each frame arrived. Frames published by the
bench carry `data.t`, the publisher's wall clock when it called publish(); the same
machine's clock, so arrival - t is the delivery latency.

Both servers (TaskHub's /ws and the bare reference) speak the same small part of the
protocol: `welcome` first, then frames with an `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from bench.measure import cpu_seconds


def raise_open_file_limit() -> int:
    """Every socket is a file descriptor: 10,000 of them need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _reason(exc: BaseException) -> str:
    """A short, countable name for why a connect failed."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd else None
        return f"closed {code}"
    return type(exc).__name__


class UserSocket:
    """One user's connection, across reconnects."""

    def __init__(self, user_id: int, token: str) -> None:
        self.user_id = user_id
        self.token = token
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.ids: set[int] = set()
        self.last_id = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.welcome_at = 0.0  # wall clock of the latest welcome
        self.unexpected_close: str | None = None


class Load:
    """The sockets of this process and what they have seen."""

    def __init__(self) -> None:
        self.sockets: dict[int, UserSocket] = {}
        self.latencies: list[float] = []  # seconds, arrival - data.t
        self.sent_at: list[float] = []  # data.t of each latency, in the same order
        self.arrivals: list[tuple[int, int, float, float]] = []  # user, id, t, arrived
        self.record_arrivals = False
        self.closing = False
        # Frames with an id but without the bench's data.t: not published by this run.
        # Redis pub/sub ignores the db number, so another stack on the same Redis server
        # whose channel prefix matches ours (the same REDIS_URL db) pushes into our
        # sockets; their ids would otherwise hide ours as "twice" and skew every count.
        self.foreign = 0

    # --- connecting ----------------------------------------------------------------------

    def _url(self, template: str, sock: UserSocket, *, resume: bool) -> str:
        url = template.format(token=sock.token)
        if resume:
            url += f"&last_event_id={sock.last_id}"
        return url

    async def _connect(
        self, sock: UserSocket, template: str, origin: str, timeout: float, *, resume: bool
    ) -> float:
        """Open the socket and wait for its welcome; the seconds it took."""
        started = time.perf_counter()
        ws = await connect(
            self._url(template, sock, resume=resume),
            origin=Origin(origin),
            open_timeout=timeout,
            close_timeout=2,
            ping_interval=None,
            # Browsers offer permessage-deflate, but both servers are measured without it:
            # it would be the client's CPU and memory in the figures, not the server's.
            compression=None,
        )
        try:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        except BaseException:
            ws.transport.abort()
            raise
        if welcome.get("type") != "welcome":
            ws.transport.abort()
            raise RuntimeError(f"first frame was {welcome.get('type')!r}, not welcome")
        sock.ws = ws
        sock.welcome_at = time.time()
        if not resume:
            sock.last_id = max(sock.last_id, int(welcome["data"].get("last_event_id") or 0))
        sock.unexpected_close = None
        sock.reader = asyncio.create_task(self._read(sock, ws))
        return time.perf_counter() - started

    async def _read(self, sock: UserSocket, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                arrived = time.time()
                frame = json.loads(message)
                event_id = frame.get("id")
                if event_id is None:
                    continue
                sent = (frame.get("data") or {}).get("t")
                if sent is None:
                    self.foreign += 1
                    continue
                if event_id in sock.ids:
                    sock.duplicates += 1
                    continue
                if event_id < sock.last_id:
                    sock.out_of_order += 1
                sock.ids.add(event_id)
                sock.last_id = max(sock.last_id, event_id)
                self.latencies.append(arrived - sent)
                self.sent_at.append(sent)
                if self.record_arrivals:
                    self.arrivals.append((sock.user_id, event_id, sent, arrived))
        except ConnectionClosed:
            pass
        finally:
            if not self.closing and sock.ws is ws:
                sock.unexpected_close = f"closed {ws.close_code}"

    async def open(
        self,
        users: list[list[Any]],
        template: str,
        origin: str,
        concurrency: int,
        timeout: float,
        deadline_s: float,
    ) -> dict[str, Any]:
        """Connect every user once, at most `concurrency` handshakes in flight, until all
        are done or `deadline_s` has passed (the rest count as not attempted)."""
        self.closing = False
        limit = asyncio.Semaphore(concurrency)
        deadline = time.monotonic() + deadline_s
        seconds: list[float] = []
        errors: dict[str, int] = {}
        skipped = 0
        first = time.time()
        last_done = first

        async def one(user_id: int, token: str) -> None:
            nonlocal skipped, last_done
            async with limit:
                if time.monotonic() > deadline:
                    skipped += 1
                    return
                sock = self.sockets.setdefault(user_id, UserSocket(user_id, token))
                try:
                    seconds.append(
                        await self._connect(sock, template, origin, timeout, resume=False)
                    )
                    last_done = time.time()
                except Exception as exc:
                    self.sockets.pop(user_id, None)
                    reason = _reason(exc)
                    errors[reason] = errors.get(reason, 0) + 1

        await asyncio.gather(*(one(user_id, token) for user_id, token in users))
        return {
            "connected": len(seconds),
            "connect_s": seconds,
            "errors": errors,
            "skipped": skipped,
            "first": first,
            "last_done": last_done,
        }

    # --- what the sockets saw ------------------------------------------------------------

    def collect(self, *, ids: bool) -> dict[str, Any]:
        """Latencies (and arrivals) since the last collect; every id seen when `ids`."""
        result: dict[str, Any] = {
            "latencies": self.latencies,
            "sent_at": self.sent_at,
            "arrivals": self.arrivals,
            "duplicates": sum(s.duplicates for s in self.sockets.values()),
            "out_of_order": sum(s.out_of_order for s in self.sockets.values()),
            "foreign": self.foreign,
            "open": sum(
                1 for s in self.sockets.values() if s.ws is not None and s.unexpected_close is None
            ),
            "unexpected_closes": _count(s.unexpected_close for s in self.sockets.values()),
            "welcome_at": {s.user_id: s.welcome_at for s in self.sockets.values()},
        }
        if ids:
            result["ids"] = {s.user_id: sorted(s.ids) for s in self.sockets.values()}
        self.latencies, self.sent_at, self.arrivals = [], [], []
        return result

    # --- a reconnect storm ---------------------------------------------------------------

    async def storm(
        self,
        template: str,
        origin: str,
        timeout: float,
        first_spread: float,
        base: float,
        cap: float,
        attempts: int,
        deadline_s: float,
        concurrency: int,
    ) -> dict[str, Any]:
        """Drop every socket at once (abort: the network goes, no close handshake), then
        each reconnects as a well-behaved client: after a random pause in [0, first_spread],
        on failure with full-jitter exponential backoff (uniform in [0, min(cap, base*2^k)]),
        and with `last_event_id` = the newest id it had seen."""
        self.record_arrivals = True
        sockets = list(self.sockets.values())
        dropped_at = time.time()
        for sock in sockets:
            if sock.ws is not None:
                sock.ws.transport.abort()
                sock.ws = None
        deadline = time.monotonic() + deadline_s
        tries: list[int] = []
        errors: dict[str, int] = {}
        back: list[float] = []
        # Real clients storm from many machines; ours share two cores with the server, so
        # the handshakes in flight are capped as in open() (without the cap the first
        # run saw the reference itself time out: the client, not the server, was the limit).
        limit = asyncio.Semaphore(concurrency)

        async def reconnect(sock: UserSocket) -> None:
            await asyncio.sleep(random.uniform(0, first_spread))
            for attempt in range(attempts):
                if time.monotonic() > deadline:
                    break
                try:
                    async with limit:
                        await self._connect(sock, template, origin, timeout, resume=True)
                except Exception as exc:
                    reason = _reason(exc)
                    errors[reason] = errors.get(reason, 0) + 1
                    await asyncio.sleep(random.uniform(0, min(cap, base * 2**attempt)))
                    continue
                tries.append(attempt + 1)
                back.append(sock.welcome_at - dropped_at)
                return

        await asyncio.gather(*(reconnect(sock) for sock in sockets))
        return {
            "dropped": len(sockets),
            "back": len(back),
            "back_s": back,
            "tries": tries,
            "errors": errors,
            "dropped_at": dropped_at,
        }

    async def close(self) -> dict[str, Any]:
        """Close every socket with a close handshake, all at once."""
        self.closing = True
        started = time.perf_counter()
        sockets = [s for s in self.sockets.values() if s.ws is not None]

        async def close_one(sock: UserSocket) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.ws.close(), 10)  # type: ignore[union-attr]
            if sock.reader is not None:
                sock.reader.cancel()

        await asyncio.gather(*(close_one(sock) for sock in sockets))
        self.sockets.clear()
        self.record_arrivals = False
        return {"closed": len(sockets), "seconds": time.perf_counter() - started}


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return counts


def main(conn: Connection) -> None:
    """The client process: run commands from the pipe until `stop`."""
    raise_open_file_limit()
    asyncio.run(_serve(conn))


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    load = Load()
    while True:
        command, params = await loop.run_in_executor(None, conn.recv)
        try:
            if command == "stop":
                await load.close()
                conn.send({"ok": True})
                return
            if command == "open":
                reply = await load.open(**params)
            elif command == "collect":
                reply = load.collect(**params)
            elif command == "storm":
                reply = await load.storm(**params)
            elif command == "close":
                reply = await load.close()
            else:
                reply = {"error": f"unknown command {command}"}
        except Exception as exc:  # the harness reports it; this process stays usable
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(reply)


# --- The harness's side --------------------------------------------------------------------


class Clients:
    """`processes` client processes (spawned: no Django, no state of the harness's), the
    users split round-robin between them; every call goes to all and waits for all."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=main, args=(child,), name=f"bench-load-{index}", daemon=True
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def _call(self, command: str, params: list[dict[str, Any]], timeout: float) -> list[Any]:
        for pipe, one in zip(self.pipes, params, strict=True):
            pipe.send((command, one))
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"client process gave no answer to {command} in {timeout:g} s")
            reply = pipe.recv()
            if isinstance(reply, dict) and "error" in reply and len(reply) == 1:
                raise RuntimeError(f"client process: {command}: {reply['error']}")
            replies.append(reply)
        return replies

    def _same(self, **params: Any) -> list[dict[str, Any]]:
        return [params] * len(self.pipes)

    def open(
        self,
        users: list[tuple[int, str]],
        *,
        template: str,
        origin: str,
        concurrency: int,
        timeout: float,
        deadline_s: float,
    ) -> dict[str, Any]:
        shares = [[list(u) for u in users[i :: len(self.pipes)]] for i in range(len(self.pipes))]
        per = max(1, concurrency // len(self.pipes))
        params = [
            dict(
                users=share,
                template=template,
                origin=origin,
                concurrency=per,
                timeout=timeout,
                deadline_s=deadline_s,
            )
            for share in shares
        ]
        replies = self._call("open", params, deadline_s + timeout + 30)
        connected = sum(r["connected"] for r in replies)
        span = max(r["last_done"] for r in replies) - min(r["first"] for r in replies)
        return {
            "attempted": len(users) - sum(r["skipped"] for r in replies),
            "connected": connected,
            "errors": _merge_counts(r["errors"] for r in replies),
            "connect_s": [s for r in replies for s in r["connect_s"]],
            "seconds": span,
            "rate": connected / span if span > 0 else None,
        }

    def collect(self, *, ids: bool = False) -> dict[str, Any]:
        replies = self._call("collect", self._same(ids=ids), 60)
        merged: dict[str, Any] = {
            "latencies": [v for r in replies for v in r["latencies"]],
            "sent_at": [v for r in replies for v in r["sent_at"]],
            "arrivals": [v for r in replies for v in r["arrivals"]],
            "duplicates": sum(r["duplicates"] for r in replies),
            "out_of_order": sum(r["out_of_order"] for r in replies),
            "foreign": sum(r["foreign"] for r in replies),
            "open": sum(r["open"] for r in replies),
            "unexpected_closes": _merge_counts(r["unexpected_closes"] for r in replies),
            "welcome_at": {int(k): v for r in replies for k, v in r["welcome_at"].items()},
        }
        if ids:
            merged["ids"] = {int(k): set(v) for r in replies for k, v in r["ids"].items()}
        return merged

    def storm(
        self,
        *,
        template: str,
        origin: str,
        timeout: float,
        first_spread: float,
        base: float,
        cap: float,
        attempts: int,
        deadline_s: float,
        concurrency: int,
    ) -> dict[str, Any]:
        replies = self._call(
            "storm",
            self._same(
                concurrency=max(1, concurrency // len(self.pipes)),
                template=template,
                origin=origin,
                timeout=timeout,
                first_spread=first_spread,
                base=base,
                cap=cap,
                attempts=attempts,
                deadline_s=deadline_s,
            ),
            deadline_s + 60,
        )
        return {
            "dropped": sum(r["dropped"] for r in replies),
            "back": sum(r["back"] for r in replies),
            "back_s": [s for r in replies for s in r["back_s"]],
            "tries": [s for r in replies for s in r["tries"]],
            "errors": _merge_counts(r["errors"] for r in replies),
            "dropped_at": min(r["dropped_at"] for r in replies),
        }

    def close(self) -> dict[str, Any]:
        replies = self._call("close", self._same(), 60)
        return {
            "closed": sum(r["closed"] for r in replies),
            "seconds": max(r["seconds"] for r in replies),
        }

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes if p.pid)

    def stop(self) -> None:
        """Never raises: used in `finally`."""
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop", {}))
        for process in self.processes:
            process.join(15)
            if process.is_alive():
                process.kill()
                process.join(5)


def _merge_counts(parts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            merged[key] = merged.get(key, 0) + value
    return merged
