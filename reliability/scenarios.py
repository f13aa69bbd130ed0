"""The fault and abuse scenarios of issue 13 (docs/reliability.md): each starts the real
processes (devserver/testing.py: Celery workers, beat, Daphne) on the database Django is
configured with, injects its fault, and reconciles against PostgreSQL.

Every loop is bounded in count and time and stops by itself; all traffic goes to
127.0.0.1. Each scenario returns a `Result`: the figures (`measured`), and `failures`,
the correctness targets it missed (loss, duplication, stuck rows, wrong codes), which the
quick test asserts empty. Times are reported, never asserted: speed belongs in bench/.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models import Count
from rest_framework_simplejwt.tokens import AccessToken

from devserver import testing
from notifications.models import Event
from notifications.redis_client import sync_redis
from notifications.selectors import newest_event_id
from reliability.bystander import BASELINE, CONTROL, SETTLE, Bystander, busy_cores
from tasks import services
from tasks.models import TERMINAL_STATUSES, Task

LOOPBACK = "127.0.0.1"


@dataclass
class Result:
    scenario: str
    measured: str
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    # Targets missed for a known, documented reason (docs/reliability.md): reported in the
    # table, not asserted by the quick test, which checks correctness only.
    misses: list[str] = field(default_factory=list)


def make_user(prefix: str) -> Any:
    return get_user_model().objects.create_user(
        username=f"{prefix}-{uuid.uuid4().hex[:8]}", password=uuid.uuid4().hex
    )


def token_for(user: Any) -> str:
    return str(AccessToken.for_user(user))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# For the outage runners' table cells (R2, R3): a range of seconds with its median, and a
# count per process.
def _span(values: list[float]) -> str:
    if not values:
        return "(none)"
    return f"{min(values):.1f}-{max(values):.1f} s (median {_percentile(values, 0.5):.1f} s)"


def _per_process(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


# --- R1: pool children and whole workers SIGKILLed while tasks run -------------------------


def r1_worker_kills(*, tasks: int, kills: int, interval: tuple[float, float]) -> Result:
    """`tasks` tasks (90 % echo, 10 % simulate with progress) on a worker (concurrency 2)
    whose pool children are SIGKILLed every `interval` s, every third kill the whole
    worker (restarted by us under the same node name). Then: every task terminal, none
    stuck, one terminal event per task attempt, and for each task running at a kill the
    time from the kill to its failed row."""
    owner = make_user("r1")
    node = f"rel-{uuid.uuid4().hex[:8]}@%h"
    env = {"QUEUED_RESEND_AFTER": "5"}
    schedule_dir = Path(tempfile.mkdtemp(prefix="reliability-beat-"))
    worker = testing.start_worker(concurrency=2, node=node, extra_env=env)
    beat = testing.start_beat(schedule_dir=schedule_dir, extra_env=env)
    ids: list[Any] = []
    drain = 0.0
    kill_log: list[tuple[str, float, list[Any]]] = []
    try:
        prefix = node.split("@")[0] + "@"
        per_round = -(-tasks // kills)
        for number in range(kills):
            # A batch before each kill, so there is work running at every kill.
            for serial in range(number * per_round, min(tasks, (number + 1) * per_round)):
                ids.append(_r1_create(owner, serial))
            time.sleep(random.uniform(*interval))
            running = list(
                Task.objects.filter(status="in_progress", worker__startswith=prefix).values_list(
                    "pk", flat=True
                )
            )
            whole = number % 3 == 2
            at = time.time()
            if whole:
                worker.kill_group()
                worker = testing.start_worker(concurrency=2, node=node, extra_env=env)
            else:
                for child in psutil.Process(worker.proc.pid).children():
                    child.send_signal(signal.SIGKILL)
            kill_log.append(("worker" if whole else "children", at, running))
        # Drain: until every task is terminal, or nothing has moved for 90 s (stuck, not
        # slow: the machine may be loaded), bounded by 15 minutes.
        drain_started = last_move = time.monotonic()
        remaining = -1
        while time.monotonic() - drain_started < 900 and time.monotonic() - last_move < 90:
            now_remaining = (
                Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL_STATUSES).count()
            )
            if now_remaining == 0:
                break
            if now_remaining != remaining:
                remaining, last_move = now_remaining, time.monotonic()
            time.sleep(1)
        drain = time.monotonic() - drain_started
    finally:
        worker.stop()
        beat.stop()
    statuses = Counter(Task.objects.filter(pk__in=ids).values_list("status", flat=True))
    stuck = sum(n for status, n in statuses.items() if status not in TERMINAL_STATUSES)
    duplicates = (
        Event.objects.filter(
            task_id__in=ids, type="task.updated", data__status__in=list(TERMINAL_STATUSES)
        )
        .values("task_id", "data__attempts")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    latencies: list[float] = []
    killed_mid_run = 0
    not_failed = []
    for kind, at, running in kill_log:
        for task in Task.objects.filter(pk__in=running):
            if task.status == "completed" and task.finished_at.timestamp() <= at + 0.5:
                continue  # it finished just before the kill
            killed_mid_run += 1
            if task.status != "failed" or "retry" not in task.error:
                not_failed.append(f"{task.pk} {task.status} {task.error[:60]!r} ({kind})")
                continue
            latencies.append(task.finished_at.timestamp() - at)
    lost = tasks - Task.objects.filter(pk__in=ids).count()
    failures = []
    if lost:
        failures.append(f"{lost} task(s) lost")
    if stuck:
        failures.append(f"{stuck} task(s) stuck: {dict(statuses)}")
    if duplicates:
        failures.append(f"{duplicates} task attempt(s) with more than one terminal event")
    if not_failed:
        failures.append(f"killed mid-run but not failed/retryable: {not_failed[:5]}")
    late = [x for x in latencies if x > 30]
    if late:
        failures.append(f"{len(late)} killed task(s) recorded more than 30 s after the kill")
    children = sum(1 for kind, _, _ in kill_log if kind == "children")
    measured = (
        f"{tasks} tasks, {len(kill_log)} kills ({children} pool, {len(kill_log) - children} "
        f"whole worker): {lost} lost, {stuck} stuck, {duplicates} duplicate terminal events; "
        f"{killed_mid_run} killed mid-run, {len(latencies)} recorded failed (retryable) "
        f"{_fmt_range(latencies)} after the kill; the rest drained {drain:.0f} s after the "
        "last kill"
    )
    return Result(
        "R1",
        measured,
        failures,
        {"statuses": dict(statuses), "latencies": latencies, "kills": len(kill_log)},
    )


def _r1_create(owner: Any, serial: int) -> Any:
    # 1 in 10 a simulate of 2-6 s: at 2,000 tasks that is ~400 s of work for the two pool
    # processes, about as long as the 30 kills take, so the drain stays short.
    if serial % 10 == 0:
        params = {"seconds": random.uniform(2, 6), "steps": 4}
        return services.task_create(owner=owner, title=f"r1 sim {serial}", params=params).pk
    return services.task_create(
        owner=owner, title=f"r1 echo {serial}", kind="echo", params={"n": serial}
    ).pk


def _fmt_range(values: list[float]) -> str:
    if not values:
        return "(none running at a kill)"
    return f"{min(values):.1f}-{max(values):.1f} s (median {_percentile(values, 0.5):.1f} s)"


# --- Sockets -----------------------------------------------------------------------------


def _ws_url(base_url: str, token: str, last_event_id: int | None = None) -> str:
    url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
    if last_event_id is not None:
        url += f"&last_event_id={last_event_id}"
    return url


def _headers(base_url: str) -> dict[str, str]:
    return {"Origin": base_url}


async def _follow(
    base_url: str,
    token: str,
    start: int,
    target: list[int],
    drop: float,
    done: threading.Event,
    catch_up_bound: float = 600,
) -> dict[str, Any]:
    """One client: follows its user's events from `start`, closing its socket at random
    (probability `drop` per frame) and resuming with the last id it saw, until it has seen
    `target[0]` (the user's newest id, set once the producer is done), at most
    `catch_up_bound` s after that (and an hour in all). Error frames (events_pruned) are
    kept by their code."""
    import websockets

    seen: list[int] = []
    errors: list[str] = []
    reconnects = 0
    last = start
    bound = time.monotonic() + 3600
    caught_up_by: float | None = None

    def in_time() -> bool:
        nonlocal caught_up_by
        if caught_up_by is None and done.is_set():
            caught_up_by = time.monotonic() + catch_up_bound
        return time.monotonic() < min(bound, caught_up_by or bound)

    while in_time():
        try:
            async with websockets.connect(
                _ws_url(base_url, token, last),
                additional_headers=_headers(base_url),
                open_timeout=30,
                max_size=None,
            ) as socket:
                # Pings as the browser client sends them (a third of the idle timeout the
                # welcome names): the server closes a socket that says nothing (4408).
                ping_every, pinged = 40.0, time.monotonic()
                while in_time():
                    if done.is_set() and target[0] and last >= target[0]:
                        return {"seen": seen, "reconnects": reconnects, "errors": errors}
                    if time.monotonic() - pinged > ping_every:
                        await socket.send(json.dumps({"type": "ping"}))
                        pinged = time.monotonic()
                    try:
                        raw = await asyncio.wait_for(socket.recv(), timeout=1)
                    except TimeoutError:
                        continue
                    frame = json.loads(raw)
                    if frame["type"] == "welcome":
                        ping_every = frame["data"]["idle_timeout"] / 3
                    elif frame["type"] == "error":
                        errors.append(frame["data"]["code"])
                    elif "id" in frame:
                        seen.append(frame["id"])
                        last = max(last, frame["id"])
                    if random.random() < drop:
                        break
        except (OSError, websockets.exceptions.WebSocketException):
            await asyncio.sleep(random.uniform(0.1, 0.5))
        reconnects += 1
    return {"seen": seen, "reconnects": reconnects, "errors": errors, "timed_out": True}


def r4_resume(
    *, users: int, clients_per_user: int, events: int, drop: float, away_events: int
) -> Result:
    """`users` x `clients_per_user` sockets; `events` task creates (each a persisted
    task.updated), `away_events` (at least one) of them for one more user whose only
    client was welcomed and left before the first, and is away for all of them; the rest
    spread over the users. Every client but that one drops its socket at random and resumes with
    last_event_id. Once the producer is done, the away user's events are made 25 hours old
    and the retention job runs, then its client resumes from the id it had. Each client
    must see every event of its user after its start, in order, none twice, and no
    events_pruned."""
    from datetime import timedelta

    from django.conf import settings
    from django.db.models import F
    from websockets.sync.client import connect

    from notifications.services import events_prune

    people = [make_user("r4") for _ in range(users)]
    away = make_user("r4-away")
    tokens = [token_for(user) for user in people]
    starts = [newest_event_id(user_id=user.pk) for user in people]
    web, base_url = testing.start_daphne()
    targets = [[0] for _ in people]
    done = threading.Event()
    # Every (events / away_events)-th create is the away user's (at least one).
    away_every = max(1, events // away_events)

    def produce() -> None:
        try:
            others = 0
            for number in range(events):
                if number % away_every == 0 and number // away_every < away_events:
                    owner = away
                else:
                    owner, others = people[others % users], others + 1
                services.task_create(owner=owner, title=f"r4 {number}", kind="echo", params={})
        finally:
            for index, user in enumerate(people):
                targets[index][0] = newest_event_id(user_id=user.pk)
            done.set()
            connections.close_all()

    async def run_clients() -> list[dict[str, Any]]:
        jobs = [
            _follow(base_url, tokens[i], starts[i], targets[i], drop, done)
            for i in range(users)
            for _ in range(clients_per_user)
        ]
        producer = threading.Thread(target=produce)
        producer.start()
        try:
            return await asyncio.gather(*jobs)
        finally:
            await asyncio.to_thread(producer.join)

    try:
        # The away client is there once (its welcome says where its user's events are),
        # then gone for the whole run.
        with connect(_ws_url(base_url, token_for(away)), additional_headers=_headers(base_url)):
            pass
        away_start = newest_event_id(user_id=away.pk)
        started = time.monotonic()
        outcomes = asyncio.run(run_clients())
        delivered_in = time.monotonic() - started
        away_seqs = list(
            Event.objects.filter(user_id=away.pk, seq__gt=away_start)
            .order_by("seq")
            .values_list("seq", flat=True)
        )
        # Away for a day: retention counts age, not number (EVENT_RETENTION_DAYS).
        Event.objects.filter(user_id=away.pk).update(
            created_at=F("created_at") - timedelta(hours=25)
        )
        pruned = events_prune(older_than=timedelta(days=settings.TASKHUB_EVENT_RETENTION_DAYS))
        back = time.monotonic()
        finished = threading.Event()
        finished.set()
        # 10,000 events replay in seconds; a client that cannot get them all (pruned)
        # must not hold the run for the followers' 10 minutes.
        away_outcome = asyncio.run(
            _follow(
                base_url,
                token_for(away),
                away_start,
                [away_seqs[-1]],
                0.0,
                finished,
                catch_up_bound=60,
            )
        )
        catch_up = time.monotonic() - back
    finally:
        web.stop()
    failures: list[str] = []
    missing = twice = out_of_order = 0
    reconnects = 0
    errors: Counter[str] = Counter()
    for index, outcome in enumerate(outcomes):
        user_index = index // clients_per_user
        expected = list(
            Event.objects.filter(
                user_id=people[user_index].pk, seq__gt=starts[user_index]
            ).values_list("seq", flat=True)
        )
        seen = outcome["seen"]
        reconnects += outcome["reconnects"]
        errors.update(outcome["errors"])
        missing += len(set(expected) - set(seen))
        twice += len(seen) - len(set(seen))
        out_of_order += sum(1 for a, b in itertools.pairwise(seen) if b <= a)
        if outcome.get("timed_out"):
            failures.append(f"client {index} did not catch up within its bound")
    total = sum(len(o["seen"]) for o in outcomes)
    for name, count in (("missing", missing), ("twice", twice), ("out of order", out_of_order)):
        if count:
            failures.append(f"{count} event deliveries {name}")
    measured = (
        f"{len(outcomes)} clients, {events} creates ({events - away_events} for them; "
        f"created and delivered in {delivered_in:.0f} s), {reconnects} drops+resumes; "
        f"{total} deliveries: {missing} missing, {twice} twice, {out_of_order} out of order"
    )
    # Compared with the ids read before the prune: a prune that took them would show.
    away_seen = away_outcome["seen"]
    errors.update(away_outcome["errors"])
    if away_seen != away_seqs:
        lost = len(set(away_seqs) - set(away_seen))
        failures.append(
            f"the client away for {away_events} events got {len(away_seen)} of "
            f"{len(away_seqs)} ({lost} missing), or not in order"
        )
    measured += (
        f"; one more client, away for {len(away_seqs)} events of its user, made 25 h old "
        f"before it came back (the retention job ran: {pruned} pruned): resumed from id "
        f"{away_start} and got {len(away_seen)} of them in {catch_up:.1f} s"
    )
    if errors:
        failures.append(f"error frames: {dict(errors)}")
    measured += f"; error frames: {dict(errors) or 0}"
    # No worker ran: its 50,000 tasks are still pending, and the next scenario's worker
    # would have to run them all before its own (S3 timed out behind them). Their events
    # stay, as history.
    Task.objects.filter(owner__in=[*people, away]).delete()
    return Result("R4", measured, failures, {"reconnects": reconnects, "deliveries": total})


def _rss(proc: psutil.Process) -> int:
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(True))


def _registry_entries(*user_ids: int, redis: Any = None) -> set[tuple[str, bytes]]:
    """The entries of the connection registry (every user's) and of these users' keys."""
    from notifications.selectors import CONNECTIONS_KEY, user_connections_key

    redis = redis or sync_redis()
    entries = set()
    for key in (CONNECTIONS_KEY, *map(user_connections_key, user_ids)):
        kind = redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "zset":
            members = redis.zrange(key, 0, -1)
        elif kind == "hash":
            members = redis.hkeys(key)
        elif kind == "set":
            members = redis.smembers(key)
        else:
            members = []
        entries.update((key, member) for member in members)
    return entries


def r7_connect_close(*, cycles: int, slow_disconnects: int, stall: float) -> Result:
    """`cycles` connect/welcome/close cycles against one Daphne: its RSS at a few points,
    "took too long to shut down" in its log, registry members left in Redis. Then
    `slow_disconnects` sockets closed at once while Redis stalls for `stall` s (see
    _r7_slow_disconnects)."""
    from websockets.sync.client import connect

    user = make_user("r7")
    token = token_for(user)
    # Entries of an earlier scenario's killed Daphne (R5's) stay until they expire: only
    # what this run leaves counts.
    before = _registry_entries(user.pk)
    web, base_url = testing.start_daphne()
    proc = psutil.Process(web.proc.pid)
    curve: list[tuple[int, float]] = [(0, _rss(proc) / 2**20)]
    failed = 0
    try:
        for number in range(1, cycles + 1):
            try:
                with connect(
                    _ws_url(base_url, token), additional_headers=_headers(base_url)
                ) as socket:
                    json.loads(socket.recv(timeout=30))
            except Exception:
                failed += 1
            if number % max(1, cycles // 4) == 0:
                curve.append((number, _rss(proc) / 2**20))
        time.sleep(2)  # the last closes' disconnect handlers
        stale = len(_registry_entries(user.pk) - before)
    finally:
        web.stop()
    slow = web.output.count("took too long to shut down")
    growth = curve[-1][1] - curve[0][1]
    failures = []
    if slow:
        failures.append(f'{slow} "took too long to shut down"')
    if stale:
        failures.append(f"{stale} stale registry member(s)")
    if failed:
        failures.append(f"{failed} cycle(s) failed")
    points = ", ".join(f"{n}: {mb:.0f}" for n, mb in curve)
    measured = (
        f"{cycles} cycles: RSS +{growth:.1f} MiB (MiB at cycle {points}); "
        f'{slow} "took too long to shut down"; {stale} stale registry members'
    )
    details: dict[str, Any] = {"curve": curve, "growth_mib": growth}
    if slow_disconnects:
        slow_measured, slow_failures, details["slow"] = _r7_slow_disconnects(
            sockets=slow_disconnects, stall=stall
        )
        measured += f"; then {slow_measured}"
        failures += slow_failures
    return Result("R7", measured, failures, details)


def _r7_slow_disconnects(*, sockets: int, stall: float) -> tuple[str, list[str], dict]:
    """`sockets` sockets (20 per user, the per-user cap) on a Daphne whose Redis is a
    server of our own, closed at once while that Redis answers nothing for `stall` s
    (CLIENT PAUSE ALL): every disconnect handler waits on Redis to release its socket's
    groups and registry entry. Longer than RELEASE_WAIT (3 s), shorter than the clients'
    socket timeouts (5 s): slow, not down. Then: no "took too long to shut down" (Daphne
    kills a handler after 10 s), no registry member left once Redis answers, and a new
    socket welcomed."""
    import websockets

    from devserver import own_servers
    from reliability.redis_outages import _probe_socket

    binary = own_servers.redis_server_binary()
    if binary is None:
        return "slow disconnects not run: no redis-server", ["no Redis server binary"], {}
    server = own_servers.OwnRedis(binary, appendonly=False)
    server.start()
    web = client = None
    users = [make_user("r7-slow") for _ in range(-(-sockets // 20))]
    tokens = [token_for(user) for user in users]

    async def open_one(token: str) -> Any:
        socket = await websockets.connect(
            _ws_url(base_url, token), additional_headers=_headers(base_url), open_timeout=30
        )
        json.loads(await asyncio.wait_for(socket.recv(), 30))
        return socket

    async def close_all_while_redis_stalls() -> tuple[int, float]:
        opened = await asyncio.gather(
            *(open_one(tokens[number // 20]) for number in range(sockets)),
            return_exceptions=True,
        )
        live = [socket for socket in opened if not isinstance(socket, BaseException)]
        await asyncio.to_thread(client.execute_command, "CLIENT", "PAUSE", int(stall * 1000))
        started = time.monotonic()
        await asyncio.gather(*(socket.close() for socket in live))
        return len(opened) - len(live), time.monotonic() - started

    stale = -1
    new_socket = False
    try:
        web, base_url = testing.start_daphne(extra_env={"REDIS_URL": server.url})
        client = server.client()
        not_opened, closed_in = asyncio.run(close_all_while_redis_stalls())
        deadline = time.monotonic() + stall + 30
        while time.monotonic() < deadline:
            stale = len(_registry_entries(*(user.pk for user in users), redis=client))
            if stale == 0:
                break
            time.sleep(0.5)
        new_socket = _probe_socket(base_url, tokens[0]) is True
    finally:
        if web is not None:
            web.stop()
        if client is not None:
            client.close()
        server.remove()
    too_long = web.output.count("took too long to shut down")
    not_waiting = web.output.count("releasing closed sockets takes over")
    tracebacks = web.output.count("Traceback")
    failures = []
    if not_opened:
        failures.append(f"{not_opened} of {sockets} sockets not welcomed before the stall")
    if not not_waiting:
        # The handlers never waited out RELEASE_WAIT: the stall did not reach them.
        failures.append("no disconnect handler met the stall")
    if too_long:
        failures.append(f'{too_long} "took too long to shut down" during a slow Redis')
    if stale:
        failures.append(f"{stale} registry member(s) left after a slow Redis")
    if tracebacks:
        failures.append(f"{tracebacks} traceback(s) in Daphne's log during a slow Redis")
    if not new_socket:
        failures.append("no welcome for a new socket after a slow Redis")
    measured = (
        f"{sockets - not_opened} sockets closed at once while Redis answered nothing for "
        f"{stall:g} s: "
        f"the clients' closes done in {closed_in:.1f} s, {too_long} \"took too long to shut "
        f'down", {not_waiting} "releasing closed sockets takes over 3 s; not waiting", '
        f"{stale} registry members left once Redis answered, a new socket "
        f"{'welcomed' if new_socket else 'not welcomed'}, {tracebacks} tracebacks"
    )
    return measured, failures, {"closed_in": closed_in, "too_long": too_long, "stale": stale}


# --- S1: abuse ---------------------------------------------------------------------------


def _http(
    method: str, url: str, token: str, body: bytes | None = None, timeout: float = 60
) -> tuple[int | str, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except (OSError, urllib.error.URLError) as error:
        return f"no response ({type(error).__name__})", {}, b""


def _flood(base_url: str, token: str, *, frames: int, seconds: float) -> Any:
    """Send `frames` pings evenly over `seconds`, reading what comes back; the close code
    the server sent, or what happened instead."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(_ws_url(base_url, token), additional_headers=_headers(base_url)) as ws:
        ws.recv(timeout=30)
        try:
            for number in range(frames):
                ws.send(json.dumps({"type": "ping", "ref": number}))
                with contextlib.suppress(TimeoutError):
                    while True:
                        ws.recv(timeout=seconds / frames)
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                return closed.rcvd.code
            return f"no close frame ({closed})"
        except TimeoutError:
            return "still open"


# What a hostile or careless client may type into the search box (docs/search.md): every
# operator of websearch_to_tsquery and to_tsquery, unbalanced quotes and brackets, the
# longest query allowed made of ORs, phrases or short prefixes, one far over it (but under
# the URL's limit, S1's 20 KB URL), a NUL, replacement characters, stop words only, and
# regular-expression and LIKE metacharacters (no ILIKE is involved: plain text).
PATHOLOGICAL_SEARCHES = (
    " or ".join(["alpha"] * 40)[:200],
    " ".join(f'"w{n} x{n}"' for n in range(40))[:200],
    " ".join(f"a{n}" for n in range(80))[:200],
    "-" * 200,
    '"' * 199,
    "(((((((((((((((((((( a ))))" + ")" * 100,
    "!:*&|<->\\'\"" * 10,
    "a:* & !b | (c <-> d) <2> e:A",
    "%_%_%_%" * 20,
    ".*" * 100,
    "the and of a to in is",
    "x" * 5_000,
    "nul\x00byte",
    "\ufffd" * 50,
    "задача развёртывание " * 9,
)


def _forget_rate_limit_history(user: Any) -> None:
    """The run's database is new, so its user ids repeat those of the run before, while
    the rate limits' history lives on in Redis (taskhub/throttling.py, a minute's window):
    a run within a minute of the last one found its burst user's 60 creates there and got
    120 429s."""
    from django.core.cache import cache
    from django_redis import get_redis_connection

    key = cache.make_key(f"throttle_user_{user.pk}") + ":log"  # DRF's key, throttling's log
    get_redis_connection("default").delete(key)


def s1_abuse(*, burst: int = 120) -> Result:
    """One Daphne (user throttle lowered to 60/min so a burst meets it): a frame flood, the
    21st socket, page_size=1000000, a 10 MB body, a 20 KB URL, pathological search
    queries, a burst of creates; and beside it another user (reliability/bystander.py)
    whose pong p99 during the abuse is compared with its own before it (target: within
    2x), and with its own beside two busy processes and no traffic (the control)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    user = make_user("s1")
    token = token_for(user)
    web, base_url = testing.start_daphne(extra_env={"THROTTLE_USER": "60/min"})
    rows: dict[str, str] = {}
    failures: list[str] = []
    misses: list[str] = []
    bystander = Bystander(
        _ws_url(base_url, token_for(make_user("s1-bystander"))), _headers(base_url)
    )
    bystander.start()
    time.sleep(5)  # the baseline: about 250 pongs on the quiet server
    try:
        bystander.step("frame flood")
        # 1,000 frames in 10 s from one socket (its own user: the checks share no limit).
        flooder = token_for(make_user("s1-flood"))
        code = _flood(base_url, flooder, frames=1000, seconds=10)
        rows["frame flood"] = f"closed {code}"
        if code != 4429:
            failures.append(f"frame flood: {code}, expected 4429")

        # 21 sockets for one user.
        bystander.step("21 sockets")
        with contextlib.ExitStack() as stack:
            for _ in range(20):
                ws = stack.enter_context(
                    connect(_ws_url(base_url, token), additional_headers=_headers(base_url))
                )
                ws.recv(timeout=30)
            extra = stack.enter_context(
                connect(_ws_url(base_url, token), additional_headers=_headers(base_url))
            )
            try:
                while True:
                    extra.recv(timeout=10)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
            except TimeoutError:
                code = "still open"
        rows["21st socket"] = f"closed {code}"
        if code != 4429:
            failures.append(f"21st socket: {code}, expected 4429")

        # page_size=1000000 over more rows than the cap.
        bystander.step("page_size")
        for number in range(110):
            services.task_create(owner=user, title=f"s1 {number}", kind="echo", params={})
        status, _, body = _http("GET", f"{base_url}/api/tasks/?page_size=1000000", token)
        size = len(json.loads(body)["results"]) if status == 200 else None
        rows["page_size=1000000"] = f"{status}, {size} rows"
        if status != 200 or size is None or size > 100:
            failures.append(f"page_size=1000000: {status}, {size} rows")

        # A 10 MB body.
        bystander.step("10 MB body")
        big = json.dumps({"title": "x", "description": "y" * 10_000_000}).encode()
        status, _, body = _http("POST", f"{base_url}/api/tasks/", token, big)
        rows["10 MB body"] = f"{status} {body[:80]!r}"
        if status != 413:
            failures.append(f"10 MB body: {status}, expected 413")

        # A 20 KB URL.
        bystander.step("20 KB URL")
        status, _, _ = _http("GET", f"{base_url}/api/tasks/?q={'a' * 20_000}", token)
        rows["20 KB URL"] = str(status)
        if status != 414:
            failures.append(f"20 KB URL: {status}, expected 414")

        # Pathological search queries over the user's 110 tasks: each answered (200, or
        # 400 with a JSON message), none 5xx; the slowest is reported.
        bystander.step("pathological searches")
        searched: Counter[Any] = Counter()
        slowest = 0.0
        for query in PATHOLOGICAL_SEARCHES:
            began = time.monotonic()
            status, _, body = _http(
                "GET", f"{base_url}/search?{urllib.parse.urlencode({'query': query})}", token
            )
            slowest = max(slowest, time.monotonic() - began)
            searched[status] += 1
            if status not in (200, 400) or (status == 400 and b'"query"' not in body):
                failures.append(f"search for {query[:40]!r}...: {status} {body[:80]!r}")
        rows["pathological searches"] = (
            f"{len(PATHOLOGICAL_SEARCHES)} queries: {dict(searched)}, "
            f"slowest {slowest * 1000:.0f} ms"
        )

        # A burst of creates, by a user of its own.
        bystander.step("burst of creates")
        burster = make_user("s1-burst")
        _forget_rate_limit_history(burster)
        token = token_for(burster)
        statuses: Counter[Any] = Counter()
        retry_after = None
        payload = json.dumps({"title": "burst", "kind": "echo", "params": {}}).encode()
        for _ in range(burst):
            status, headers, _ = _http("POST", f"{base_url}/api/tasks/", token, payload)
            statuses[status] += 1
            if status == 429:
                retry_after = headers.get("Retry-After")
        rows["burst of creates"] = f"{burst} creates: {dict(statuses)}, Retry-After {retry_after}"
        if not statuses.get(429) or retry_after is None:
            failures.append(f"burst of creates: {dict(statuses)}, no 429 with Retry-After")
        if any(isinstance(s, int) and s >= 500 for s in statuses):
            failures.append(f"burst of creates: 5xx {dict(statuses)}")

        # The control: no traffic, two cores kept busy (reliability/bystander.py).
        bystander.step(SETTLE)
        time.sleep(1)  # the burst's last requests are done
        bystander.step(CONTROL)
        busy_cores(2, seconds=5)
    finally:
        bystander.finish()
        web.stop()
    baseline, abuse = bystander.samples_by_step.get(BASELINE), bystander.during_abuse()
    if bystander.problem or not (baseline and abuse):
        failures.append(f"the other user's socket: {bystander.problem or 'no pongs'}")
    else:
        before, during = _percentile(baseline, 0.99) * 1000, _percentile(abuse, 0.99) * 1000
        ratio = during / before if before else float("inf")
        rows["another user's pong p99, before / during the abuse"] = (
            f"{before:.1f} / {during:.1f} ms ({ratio:.1f}x, {len(abuse)} pongs during; "
            f"slowest by step: {bystander.slowest_by_step()})"
        )
        control = bystander.samples_by_step.get(CONTROL)
        if control:
            beside = _percentile(control, 0.99) * 1000
            rows["the control: pong p99 with no traffic beside two busy processes"] = (
                f"{beside:.1f} ms ({beside / before:.1f}x the baseline, {len(control)} pongs)"
            )
        if ratio > 2:
            misses.append(f"another user's p99 {ratio:.1f}x its baseline (target 2x)")
    tracebacks = web.output.count("Traceback")
    rows["tracebacks in Daphne's log"] = str(tracebacks)
    measured = "; ".join(f"{name}: {value}" for name, value in rows.items())
    return Result("S1", measured, failures, rows, misses)


def r6_malformed_frames(*, frames: int) -> Result:
    """R6, in reliability/malformed_frames.py (imported here on use: it imports this)."""
    from reliability.malformed_frames import r6_malformed_frames

    return r6_malformed_frames(frames=frames)


def r3_redis_outages(**options: Any) -> Result:
    """R3, in reliability/redis_outages.py (imported here on use: it imports this)."""
    from reliability.redis_outages import r3_redis_outages

    return r3_redis_outages(**options)


def r2_postgres_outages(**options: Any) -> Result:
    """R2, in reliability/pg_outages.py (imported here on use: it imports this)."""
    from reliability.pg_outages import r2_postgres_outages

    return r2_postgres_outages(**options)


def r5_daphne_kills(**options: Any) -> Result:
    """R5, in reliability/daphne_kills.py (imported here on use: it imports this)."""
    from reliability.daphne_kills import r5_daphne_kills

    return r5_daphne_kills(**options)


def _security(name: str) -> Any:
    """A runner of reliability/security_checks.py (imported on use: it imports this)."""

    def run(**options: Any) -> Result:
        from reliability import security_checks

        return getattr(security_checks, name)(**options)

    return run


s2_revocation = _security("s2_revocation")
s3_canary = _security("s3_canary")
s4_schema_fuzz = _security("s4_schema_fuzz")
s7_secret = _security("s7_secret")


QUICK = {
    "R1": lambda: r1_worker_kills(tasks=60, kills=4, interval=(3, 6)),
    "R2": lambda: r2_postgres_outages(seconds=60, rate=10, gap=(5, 10), down=(0, 5)),
    "R3": lambda: r3_redis_outages(
        users=10, clients_per_user=2, cycles=2, bursts=1, rate=6, gap=(1, 2)
    ),
    "R4": lambda: r4_resume(users=10, clients_per_user=2, events=300, drop=0.05, away_events=100),
    "R5": lambda: r5_daphne_kills(users=25, clients_per_user=4, kills=1, rate=10),
    "R6": lambda: r6_malformed_frames(frames=300),
    "R7": lambda: r7_connect_close(cycles=1000, slow_disconnects=100, stall=4),
    "S1": lambda: s1_abuse(),
    "S2": lambda: s2_revocation(repeat=1, sockets=5, rounds=1, admin_sockets=2),
    "S3": lambda: s3_canary(rounds=1),
    "S7": lambda: s7_secret(full=False),
}

FULL = {
    "R1": lambda: r1_worker_kills(tasks=2000, kills=30, interval=(5, 20)),
    "R2": lambda: r2_postgres_outages(seconds=300, rate=20, gap=(5, 20), down=(0, 5)),
    "R3": lambda: r3_redis_outages(
        users=50, clients_per_user=4, cycles=20, bursts=4, rate=6, gap=(3, 8)
    ),
    "R4": lambda: r4_resume(
        users=50, clients_per_user=4, events=50_000, drop=0.01, away_events=10_000
    ),
    "R5": lambda: r5_daphne_kills(users=250, clients_per_user=4, kills=2, rate=20),
    "R6": lambda: r6_malformed_frames(frames=10_000),
    "R7": lambda: r7_connect_close(cycles=10_000, slow_disconnects=500, stall=4),
    "S1": lambda: s1_abuse(),
    "S2": lambda: s2_revocation(repeat=10, sockets=20, rounds=3, admin_sockets=5),
    "S3": lambda: s3_canary(rounds=20),
    "S7": lambda: s7_secret(full=True),
    # Last: 1,000 examples per operation is ~20 minutes of CPU (CI runs 100).
    "S4": lambda: s4_schema_fuzz(examples=1000),
}
