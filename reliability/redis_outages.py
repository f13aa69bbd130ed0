"""R3 (issue 13; docs/reliability.md): Redis killed and restarted while tasks run and
sockets listen.

A Redis of the scenario's own (redis-server or valkey-server on a free port, append-only
file on, so a restart on the same port and directory is what a production restart looks
like) and a stack pointed at it: one Daphne, one Celery worker, beat. Then, all at once:

* clients: `users` x `clients_per_user` sockets, each following its user's events and,
  whenever its socket ends, reconnecting with `last_event_id` (backoff 0.2-1 s), as
  docs/protocol.md tells a client to; each records every close code it got;
* a producer: task creates over REST (real HTTP to the Daphne, a JWT per user) at a
  steady rate, spread over the users, recording every answer;
* the faults: `cycles` times SIGKILL the Redis, leave it down 1-3 s, start it again on the
  same port with the same data; every few cycles a burst of `CLIENT KILL TYPE normal`
  (every connection but pub/sub and replicas dropped at once, the server staying up).

After each return: how long until a task created after it completes (the worker consumes
again, end to end: web nudge or dispatcher tick, broker, worker), and how long until a new
socket gets its welcome (the web accepts sockets again). At the end: every 2xx create
persisted once and terminal, every client saw every event of its user in order and none
twice (against notifications_event), no socket closed with a code docs/protocol.md does
not name for an outage (1011, 1013, or no close frame), tracebacks and "Redis
unavailable" lines in each process's output.

Redis is a cache, a broker and a pipe (docs/architecture.md, "Processes"): creates must
succeed throughout, since PostgreSQL stays up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connections

from devserver import own_servers, testing
from notifications.models import Event
from notifications.selectors import newest_event_id
from reliability.producer import Producer, rest_create
from reliability.scenarios import (
    Result,
    _headers,
    _per_process,
    _span,
    _ws_url,
    make_user,
    token_for,
)
from tasks.models import TERMINAL_STATUSES, Task

# Recovery target after each return of Redis (issue 13).
RECOVERY_TARGET = 10.0
# How long the run waits for one recovery before it calls it missed and goes on.
RECOVERY_BOUND = 45.0
# Close codes docs/protocol.md names for a socket that an outage ended: a normal close or
# going away, and 4503 (a backing service failed). 1011 ("server error") and 1013 are
# what the docs say the server no longer sends for an outage.
OUTAGE_CLOSE_CODES = {1000, 1001, 4503}
# The processes' output of the last run (web.log, worker.log, beat.log).
LOG_DIR = Path(tempfile.gettempdir()) / "taskhub-reliability-r3"
PING_EVERY = 30.0  # below WS_IDLE_TIMEOUT (120 s): an idle client is not closed with 4408


# --- the clients -------------------------------------------------------------------------


class Listeners:
    """State the clients share with the main thread (read there only after `finished`)."""

    def __init__(self, count: int) -> None:
        self.welcomed: set[int] = set()  # clients that got their first welcome
        self.all_welcomed = threading.Event()
        self.count = count
        self.done = threading.Event()  # the producer is done and every task is terminal
        self.deadline = [float("inf")]  # monotonic; set with `done`


async def _listen(
    index: int, base_url: str, token: str, start: int, target: list[int], shared: Listeners
) -> dict[str, Any]:
    """One client: follows its user's events from `start`; whenever its socket ends,
    reconnects with backoff and the last id it saw. Returns what it saw and every way its
    sockets ended (close codes, handshakes refused), until it has seen `target[0]`."""
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    seen: list[int] = []
    ends: Counter[Any] = Counter()
    last = start
    hard_bound = time.monotonic() + 3600  # the run's own bounds end it long before
    while time.monotonic() < min(hard_bound, shared.deadline[0]):
        try:
            async with websockets.connect(
                _ws_url(base_url, token, last),
                additional_headers=_headers(base_url),
                open_timeout=30,
                max_size=None,
            ) as socket:
                pinged = time.monotonic()
                while True:
                    if shared.done.is_set() and last >= target[0]:
                        return {"seen": seen, "ends": ends}
                    if time.monotonic() > shared.deadline[0]:
                        break
                    if time.monotonic() - pinged > PING_EVERY:
                        await socket.send(json.dumps({"type": "ping"}))
                        pinged = time.monotonic()
                    try:
                        raw = await asyncio.wait_for(socket.recv(), timeout=1)
                    except TimeoutError:
                        continue
                    frame = json.loads(raw)
                    if frame.get("type") == "welcome":
                        shared.welcomed.add(index)
                        if len(shared.welcomed) == shared.count:
                            shared.all_welcomed.set()
                    elif "id" in frame:
                        seen.append(frame["id"])
                        last = max(last, frame["id"])
        except ConnectionClosed as closed:
            ends[closed.rcvd.code if closed.rcvd else "no close frame"] += 1
        except InvalidStatus as refused:
            ends[f"handshake {refused.response.status_code}"] += 1
        except (OSError, TimeoutError) as error:
            ends[f"no connection ({type(error).__name__})"] += 1
        await asyncio.sleep(random.uniform(0.2, 1.0))
    return {"seen": seen, "ends": ends, "timed_out": True}


def _run_clients(
    base_url: str,
    tokens: list[str],
    starts: list[int],
    targets: list[list[int]],
    clients_per_user: int,
    shared: Listeners,
    outcomes: list[dict[str, Any]],
) -> None:
    async def main() -> None:
        jobs = [
            _listen(index, base_url, tokens[user], starts[user], targets[user], shared)
            for index, user in enumerate(
                u for u in range(len(tokens)) for _ in range(clients_per_user)
            )
        ]
        outcomes.extend(await asyncio.gather(*jobs))

    asyncio.run(main())


# --- the faults --------------------------------------------------------------------------


def _probe_socket(base_url: str, token: str) -> Any:
    """One connect: True on a welcome, else how it ended (a close code, a refusal; an
    `error` frame may come before the close)."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(
            _ws_url(base_url, token), additional_headers=_headers(base_url), open_timeout=5
        ) as socket:
            for _ in range(5):
                if json.loads(socket.recv(timeout=5)).get("type") == "welcome":
                    return True
            return "no welcome in 5 frames"
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else "no close frame"
    except InvalidStatus as refused:
        return f"handshake {refused.response.status_code}"
    except (OSError, TimeoutError) as error:
        return type(error).__name__


def _recovery(back_at: float, base_url: str, probe_token: str) -> dict[str, Any]:
    """After Redis came back at `back_at` (epoch seconds): seconds until a task created
    since completed, and until a new socket got its welcome (None: not within the bound)."""
    since = datetime.fromtimestamp(back_at, UTC)
    worker = socket = None
    refusals: Counter[Any] = Counter()
    while time.time() - back_at < RECOVERY_BOUND and (worker is None or socket is None):
        if socket is None:
            outcome = _probe_socket(base_url, probe_token)
            if outcome is True:
                socket = time.time() - back_at
            else:
                refusals[outcome] += 1
        if worker is None:
            first = (
                Task.objects.filter(created_at__gte=since, status="completed")
                .order_by("finished_at")
                .values_list("finished_at", flat=True)
                .first()
            )
            if first is not None:
                worker = max(0.0, first.timestamp() - back_at)
        time.sleep(0.2)
    return {"worker": worker, "socket": socket, "refusals": refusals}


def r3_redis_outages(
    *,
    users: int,
    clients_per_user: int,
    cycles: int,
    bursts: int,
    rate: float,
    gap: tuple[float, float],
) -> Result:
    """R3: see the module's docstring. `cycles` SIGKILLs of Redis (down 1-3 s each),
    `bursts` CLIENT KILL TYPE normal bursts among them, `gap` seconds between a recovery
    and the next fault, creates at `rate` a second throughout."""
    binary = own_servers.redis_server_binary()
    if binary is None:
        return Result("R3", "not run: no redis-server or valkey-server", ["no Redis server binary"])
    server = own_servers.OwnRedis(binary)  # append-only: restarted with its data
    server.start()  # from this (the main) thread, which outlives it
    env = {
        "REDIS_URL": server.url,
        # A run message lost with the broker (a SIGKILL loses up to a second of its
        # append-only file) is sent again after this long; the default, 60 s, is longer
        # than the quick form lasts.
        "QUEUED_RESEND_AFTER": "5",
    }
    schedule_dir = Path(tempfile.mkdtemp(prefix="reliability-beat-"))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    people = [make_user("r3") for _ in range(users)]
    tokens = [token_for(user) for user in people]
    starts = [newest_event_id(user_id=user.pk) for user in people]
    targets = [[0] for _ in people]
    probe_token = token_for(make_user("r3-probe"))
    shared = Listeners(users * clients_per_user)
    outcomes: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    web = worker = beat = None
    producer = None
    clients = None
    drain = 0.0
    try:
        web, base_url = testing.start_daphne(extra_env=env)
        worker = testing.start_worker(concurrency=2, extra_env=env)
        beat = testing.start_beat(schedule_dir=schedule_dir, extra_env=env)
        clients = threading.Thread(
            target=_run_clients,
            args=(base_url, tokens, starts, targets, clients_per_user, shared, outcomes),
            name="r3-clients",
            daemon=True,
        )
        clients.start()
        if not shared.all_welcomed.wait(timeout=120):
            raise AssertionError(f"only {len(shared.welcomed)} clients got a welcome in 120 s")
        producer = Producer(
            lambda serial: rest_create(
                base_url,
                tokens[serial % len(tokens)],
                {"title": f"r3 {serial}", "kind": "echo", "params": {"n": serial}},
            ),
            rate,
            name="r3-producer",
        )
        producer.start()
        time.sleep(2)  # tasks running before the first fault

        # Bursts go after evenly spaced cycles (a burst after cycle 5, 10, ... of 20).
        burst_after = {round((n + 1) * cycles / bursts) for n in range(bursts)} if bursts else set()
        for number in range(1, cycles + 1):
            killed = time.time()
            up_again = killed + random.uniform(1, 3)
            server.kill()
            # New sockets while Redis is away: each must be closed with 4503 (no 500
            # handshake, no 1011), however often clients try.
            while_down: Counter[Any] = Counter()
            while time.time() < up_again:
                outcome = _probe_socket(base_url, probe_token)
                while_down["welcome" if outcome is True else outcome] += 1
                time.sleep(min(0.3, max(0.0, up_again - time.time())))
            server.start()
            back = time.time()
            fault = {"kind": "kill", "down": back - killed, "while_down": while_down}
            faults.append({**fault, **_recovery(back, base_url, probe_token)})
            time.sleep(random.uniform(*gap))
            if number in burst_after:
                # Three rounds 0.3 s apart: what reconnected after the first is dropped
                # again while it re-establishes itself.
                dropped = 0
                for _ in range(3):
                    dropped += server.kill_clients()
                    time.sleep(0.3)
                back = time.time()
                faults.append(
                    {
                        "kind": "client kill",
                        "dropped": dropped,
                        **_recovery(back, base_url, probe_token),
                    }
                )
                time.sleep(random.uniform(*gap))
        producer.finish()

        # Drain: every accepted task terminal, or nothing moved for 60 s (stuck, not slow),
        # bounded by 5 minutes.
        ids = [answer.task_id for answer in producer.answers if answer.ok]
        drain_started = last_move = time.monotonic()
        remaining = -1
        while time.monotonic() - drain_started < 300 and time.monotonic() - last_move < 60:
            left = Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL_STATUSES).count()
            if left == 0:
                break
            if left != remaining:
                remaining, last_move = left, time.monotonic()
            time.sleep(0.5)
        drain = time.monotonic() - drain_started
        # Now the clients know where their user's log ends; they have 90 s to get there
        # (3 x WS_CATCHUP_INTERVAL: a push lost with no later one is swept within 2).
        for index, user in enumerate(people):
            targets[index][0] = newest_event_id(user_id=user.pk)
        shared.deadline[0] = time.monotonic() + 90
        shared.done.set()
        clients.join(timeout=120)
    finally:
        shared.deadline[0] = 0  # ends every client at its next check
        shared.done.set()
        if producer is not None:
            producer.finish()
        if clients is not None:
            clients.join(timeout=30)
        alive = {}
        for process in (beat, worker, web):
            if process is not None:
                alive[process.name] = process.proc.poll() is None
                process.stop()
                # Kept for a look at whatever the run finds (a traceback, a 500).
                (LOG_DIR / f"{process.name}.log").write_text(process.output)
        server.remove()
        shutil.rmtree(schedule_dir, ignore_errors=True)
        connections.close_all()
    return _reconcile(
        people, starts, clients_per_user, outcomes, producer, faults, drain, alive,
        {"web": web, "worker": worker, "beat": beat},
    )  # fmt: skip


def _reconcile(
    people: list[Any],
    starts: list[int],
    clients_per_user: int,
    outcomes: list[dict[str, Any]],
    producer: Producer,
    faults: list[dict[str, Any]],
    drain: float,
    alive: dict[str, bool],
    procs: dict[str, Any],
) -> Result:
    failures: list[str] = []
    misses: list[str] = []

    # Creates: every one 2xx (PostgreSQL was up throughout), each persisted once.
    statuses = Counter(answer.status for answer in producer.answers)
    ids = [answer.task_id for answer in producer.answers if answer.ok]
    not_2xx = {s: n for s, n in statuses.items() if not (isinstance(s, int) and 200 <= s < 300)}
    if not_2xx:
        failures.append(f"creates answered other than 2xx: {not_2xx}")
    rows = Task.objects.filter(owner__in=people).count()
    if rows != len(ids):
        failures.append(f"{rows} task rows for {len(ids)} 2xx creates")
    task_statuses = Counter(Task.objects.filter(pk__in=ids).values_list("status", flat=True))
    lost = len(ids) - sum(task_statuses.values())
    stuck = sum(n for status, n in task_statuses.items() if status not in TERMINAL_STATUSES)
    if lost:
        failures.append(f"{lost} 2xx create(s) without a row")
    if stuck:
        failures.append(f"{stuck} task(s) stuck: {dict(task_statuses)}")

    # Events: each client against its user's log.
    missing = twice = out_of_order = deliveries = 0
    ends: Counter[Any] = Counter()
    behind = 0
    for index, outcome in enumerate(outcomes):
        user = index // clients_per_user
        expected = set(
            Event.objects.filter(user_id=people[user].pk, seq__gt=starts[user]).values_list(
                "seq", flat=True
            )
        )
        seen = outcome["seen"]
        deliveries += len(seen)
        ends.update(outcome["ends"])
        missing += len(expected - set(seen))
        twice += len(seen) - len(set(seen))
        out_of_order += sum(1 for a, b in itertools.pairwise(seen) if b <= a)
        behind += bool(outcome.get("timed_out"))
    if len(outcomes) != len(people) * clients_per_user:
        failures.append(f"{len(outcomes)} client outcomes of {len(people) * clients_per_user}")
    for name, count in (("missing", missing), ("twice", twice), ("out of order", out_of_order)):
        if count:
            failures.append(f"{count} event deliveries {name}")
    if behind:
        failures.append(f"{behind} client(s) had not caught up at the end")

    # Close codes and refused handshakes: only what the docs name for an outage.
    socket_ends = Counter(ends)
    for fault in faults:
        socket_ends.update({f"probe: {k}": n for k, n in fault["refusals"].items()})
        socket_ends.update(
            {f"probe while down: {k}": n for k, n in fault.get("while_down", {}).items()}
        )
    wrong = {
        str(k): n
        for k, n in socket_ends.items()
        if str(k).split(": ")[-1] not in {str(c) for c in OUTAGE_CLOSE_CODES}
    }
    if wrong:
        failures.append(f"sockets ended other than {sorted(OUTAGE_CLOSE_CODES)}: {wrong}")

    # The processes: alive throughout, tracebacks, one outage line per outage.
    dead = [name for name, up in alive.items() if not up]
    if dead:
        failures.append(f"process(es) exited during the run: {dead}")
    tracebacks = {name: p.output.count("Traceback") for name, p in procs.items() if p}
    outage_lines = {
        name: sum("Redis unavailable" in line for line in p.lines) for name, p in procs.items() if p
    }
    kills = [f for f in faults if f["kind"] == "kill"]
    if any(tracebacks.values()):
        failures.append(f"tracebacks in the processes' output: {tracebacks}")
    if outage_lines.get("web", 0) > len(faults):
        failures.append(f"{outage_lines['web']} 'Redis unavailable' lines for {len(faults)} faults")

    # Recovery after each return: figures; beyond the target, a miss with the figure.
    def figures(kind: str, key: str) -> list[float | None]:
        return [f[key] for f in faults if f["kind"] == kind]

    parts = []
    for kind in ("kill", "client kill"):
        for key, what in (("worker", "a new task completed"), ("socket", "a new socket welcomed")):
            values = figures(kind, key)
            if not values:
                continue
            done = [v for v in values if v is not None]
            never = len(values) - len(done)
            late = [v for v in done if v > RECOVERY_TARGET]
            label = "Redis back" if kind == "kill" else "a CLIENT KILL burst"
            parts.append(
                f"{what} {_span(done)} after {label}"
                + (f" ({never} not within {RECOVERY_BOUND:.0f} s)" if never else "")
            )
            if never or late:
                misses.append(
                    f"{what} after {label}: {len(late) + never} of {len(values)} beyond "
                    f"{RECOVERY_TARGET:.0f} s (max {max(done, default=float('nan')):.1f} s"
                    + (f", {never} not within {RECOVERY_BOUND:.0f} s" if never else "")
                    + ")"
                )
    downs = [f["down"] for f in kills]
    ends_text = ", ".join(f"{k}: {n}" for k, n in sorted(socket_ends.items(), key=str)) or "none"
    measured = (
        f"{len(outcomes)} sockets ({len(people)} users x {clients_per_user}), "
        f"{len(kills)} Redis SIGKILLs (down {_span(downs)}) and "
        f"{len(faults) - len(kills)} CLIENT KILL TYPE normal bursts, "
        f"{len(producer.answers)} REST creates at {producer.rate:g}/s: {dict(statuses)}; "
        f"{lost} lost, {stuck} stuck (drained {drain:.0f} s after the last fault); "
        f"{deliveries} deliveries: {missing} missing, {twice} twice, {out_of_order} out of "
        f"order; {'; '.join(parts)}; sockets ended: {ends_text}; tracebacks "
        f"{_per_process(tracebacks)}; 'Redis unavailable' lines {_per_process(outage_lines)}"
    )
    return Result(
        "R3",
        measured,
        failures,
        {"faults": faults, "statuses": dict(statuses), "ends": dict(socket_ends)},
        misses,
    )
