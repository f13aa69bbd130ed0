"""R5 (issue 13; docs/reliability.md): the web process (Daphne) SIGKILLed and restarted
under many sockets.

One Daphne on a fixed port (so a restart takes the same address, as a supervisor restarts
it) and, in one asyncio loop of this process, `users` x `clients_per_user` clients, each
following its user's events over /ws. Each client behaves as the browser client does
(taskhub/static/taskhub/protocol-client.js): whenever its socket ends it reconnects with
`last_event_id` (the newest id it has seen) after an exponential backoff with jitter,
500 ms doubling to 8 s, a delay drawn from its upper half, reset by a welcome; so 1,000
clients thrown off at once do not all come back in the same instant.

While a producer thread creates tasks for the users (`tasks.services.task_create`, each
create a persisted `task.updated` event), the harness SIGKILLs Daphne `kills` times and
starts it again on the same port each time; after the last restart the producer goes on
for a few seconds, then stops.

Per client and kill: the time from the kill until the client is back (a welcome from the
new process) and caught up (it has seen its user's newest event id as of the restart,
read from PostgreSQL when the new process answers /healthz), and the connection attempts
it took. At the end each client's deliveries are checked against `notifications_event`:
every event of its user after its start, in order, none twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import resource
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections

from devserver import testing
from notifications.models import Event
from notifications.selectors import newest_event_id
from reliability.scenarios import Result, _headers, _percentile, _ws_url, token_for
from tasks import services

# Recovery target per client and kill (issue 13).
RECOVERY_TARGET = 30.0
# How long the run waits for every client to recover from one kill before it goes on; a
# client not back and caught up by then counts as not back (a failure).
RECOVERY_BOUND = 120.0
# The browser client's backoff (protocol-client.js: minBackoffMs, maxBackoffMs).
MIN_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# Close codes after which the browser client does not reconnect (its FATAL_CLOSE_CODES):
# for this run, a client that gets one is not back.
FATAL_CLOSE_CODES = {4400, 4401, 4403}
CLOSE_TOO_MANY = 4429
CLOSE_SERVICE_UNAVAILABLE = 4503
PING_EVERY = 30.0  # below WS_IDLE_TIMEOUT (120 s): an idle client is not closed with 4408


def backoff_delay(attempt: int, code: int | None) -> float:
    """The browser client's delay before reconnect attempt `attempt` (0 after a welcome):
    exponential, capped, drawn from the upper half of the step (protocol-client.js,
    _scheduleReconnect). Too many connections waits longest; 4503 starts a step up."""
    exponent = min(attempt + (1 if code == CLOSE_SERVICE_UNAVAILABLE else 0), 10)
    delay = min(MAX_BACKOFF, MIN_BACKOFF * 2**exponent)
    if code == CLOSE_TOO_MANY:
        delay = MAX_BACKOFF
    return delay / 2 + random.random() * (delay / 2)


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed` (bounded by the hard limit)
    and return it: one socket per client here, and Daphne, started after this, inherits
    the limit for the other end of each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


# --- the clients -------------------------------------------------------------------------


@dataclass
class ClientLog:
    """What one client did; times are time.monotonic(), the clock of the kills too.
    Written by the client's coroutine, read by the main thread (appends and int writes,
    each atomic under the GIL)."""

    seen: list[int] = field(default_factory=list)  # event ids, in arrival order
    seen_at: list[float] = field(default_factory=list)
    welcomes: list[float] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)  # each connection attempt
    ends: Counter[Any] = field(default_factory=Counter)  # how its sockets/attempts ended
    last: int = 0  # the newest event id seen (or its start)
    fatal: int | None = None  # a close code it gave up on
    finished: bool = False  # saw its final target


class Shared:
    """The run's state the clients read: set by the main thread."""

    def __init__(self) -> None:
        self.done = threading.Event()  # the producer stopped; `targets` are final
        self.targets: list[int] = []  # per user: its newest id when the producer stopped
        self.deadline = float("inf")  # monotonic; the clients give up after it


async def _client(
    log: ClientLog, base_url: str, token: str, user_index: int, shared: Shared
) -> None:
    """One client: follows its user's events from `log.last`, reconnecting with backoff
    and `last_event_id` whenever its socket ends, until it has seen its user's final
    target (or the run's deadline)."""
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    attempt = 0
    code: int | None = None
    while time.monotonic() < shared.deadline:
        log.attempts.append(time.monotonic())
        code = None
        try:
            async with websockets.connect(
                _ws_url(base_url, token, log.last),
                additional_headers=_headers(base_url),
                open_timeout=30,
                max_size=None,
                # The protocol's own ping (below) is what the server counts as activity;
                # websockets' keepalive would only add 1,000 timers.
                ping_interval=None,
            ) as socket:
                pinged = time.monotonic()
                while True:
                    if shared.done.is_set() and log.last >= shared.targets[user_index]:
                        log.finished = True
                        return
                    if time.monotonic() > shared.deadline:
                        return
                    if time.monotonic() - pinged > PING_EVERY:
                        await socket.send(json.dumps({"type": "ping"}))
                        pinged = time.monotonic()
                    try:
                        raw = await asyncio.wait_for(socket.recv(), timeout=1)
                    except TimeoutError:
                        continue
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "welcome":
                        log.welcomes.append(time.monotonic())
                        attempt = 0  # as the browser client: a welcome resets the backoff
                    elif "id" in frame and kind not in ("pong", "error"):
                        log.seen.append(frame["id"])
                        log.seen_at.append(time.monotonic())
                        log.last = max(log.last, frame["id"])
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            log.ends[code if code is not None else "no close frame"] += 1
        except InvalidStatus as refused:
            log.ends[f"HTTP {refused.response.status_code}"] += 1
        except (OSError, websockets.exceptions.WebSocketException) as error:
            # Refused while Daphne is down or starting, or a handshake cut off.
            log.ends[type(error).__name__] += 1
        if code in FATAL_CLOSE_CODES:
            log.fatal = code
            return
        await asyncio.sleep(backoff_delay(attempt, code))
        attempt += 1


def _run_clients(
    logs: list[ClientLog], base_url: str, tokens: list[str], per_user: int, shared: Shared
) -> None:
    """All clients on one asyncio loop (this thread's)."""

    async def main() -> None:
        await asyncio.gather(
            *(
                _client(log, base_url, tokens[index // per_user], index // per_user, shared)
                for index, log in enumerate(logs)
            )
        )

    asyncio.run(main())


# --- the producer ------------------------------------------------------------------------


def _produce(people: list[Any], rate: float, stop: threading.Event, made: list[int]) -> None:
    """Task creates spread over the users at `rate` per second until `stop`, at most an
    hour's worth; `made[0]` counts them."""
    try:
        interval = 1.0 / rate
        next_at = time.monotonic()
        for number in range(int(rate * 3600)):
            if stop.is_set():
                return
            services.task_create(
                owner=people[number % len(people)], title=f"r5 {number}", kind="echo", params={}
            )
            made[0] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        connections.close_all()


# --- the scenario ------------------------------------------------------------------------


def _make_users(count: int) -> list[Any]:
    """Users without a password: hashing one is ~0.3 s of CPU, and the clients sign in
    with a JWT only."""
    model = get_user_model()
    tag = uuid.uuid4().hex[:6]
    return [model.objects.create_user(username=f"r5-{tag}-{n}") for n in range(count)]


def _recovered(log: ClientLog, kill_at: float, snapshot: int) -> float | None:
    """When this client was back (a welcome after the kill) and caught up (seen
    `snapshot`, its user's newest id at the restart), or None if not (yet)."""
    back = next((t for t in log.welcomes if t > kill_at), None)
    if back is None:
        return None
    if log.last < snapshot:
        return None
    caught = next((t for i, t in zip(log.seen, log.seen_at, strict=False) if i >= snapshot), None)
    # An id seen before the kill was already caught up: then being back is enough.
    return max(back, caught or back)


def r5_daphne_kills(
    *,
    users: int,
    clients_per_user: int,
    kills: int,
    rate: float,
    before: float = 3.0,
    between: float = 5.0,
    after: float = 5.0,
) -> Result:
    """`users` x `clients_per_user` clients following their user's events while a producer
    creates `rate` tasks a second; Daphne SIGKILLed `kills` times (`before` s after the
    producer starts, then `between` s after every client is back from the previous kill)
    and restarted on its port; the producer stops `after` s after the last restart."""
    count = users * clients_per_user
    # Each client's socket, Daphne's end of it (inherited), and room for files and pools.
    open_files = raise_open_files_limit(2 * count + 512)
    people = _make_users(users)
    tokens = [token_for(user) for user in people]
    starts = [newest_event_id(user_id=user.pk) for user in people]
    logs = [ClientLog(last=starts[index // clients_per_user]) for index in range(count)]
    port = testing.free_port_for_a_restarted_server()
    web, base_url = testing.start_daphne(port=port)
    lives = [web]
    shared = Shared()
    stop = threading.Event()
    made = [0]
    kill_log: list[tuple[float, float, list[int]]] = []  # (kill, up again, snapshot/user)
    unrecovered: list[int] = []  # per kill: clients not back and caught up within the bound
    clients = threading.Thread(
        target=_run_clients, args=(logs, base_url, tokens, clients_per_user, shared)
    )
    producer = threading.Thread(target=_produce, args=(people, rate, stop, made))
    shared.deadline = time.monotonic() + 1800  # the run's own bounds end it long before
    clients.start()
    try:
        testing.wait_until(
            lambda: all(log.welcomes for log in logs),
            timeout=120,
            interval=0.2,
            message=f"{count} clients' first welcome",
        )
        producer.start()
        time.sleep(before)
        for number in range(kills):
            if number:
                time.sleep(between)
            kill_at = time.monotonic()
            web.kill_group()  # SIGKILL, as `kill -9` or the OOM killer: no close frames
            web, _ = testing.start_daphne(port=port)  # the same port; as a supervisor would
            lives.append(web)
            up_at = time.monotonic()
            snapshot = [newest_event_id(user_id=user.pk) for user in people]
            kill_log.append((kill_at, up_at, snapshot))

            def everyone_back(kill_at: float = kill_at, snapshot: list[int] = snapshot) -> bool:
                return all(
                    _recovered(log, kill_at, snapshot[index // clients_per_user]) is not None
                    for index, log in enumerate(logs)
                )

            bound = time.monotonic() + RECOVERY_BOUND
            while time.monotonic() < bound and not everyone_back():
                time.sleep(0.5)
            unrecovered.append(
                sum(
                    _recovered(log, kill_at, snapshot[index // clients_per_user]) is None
                    for index, log in enumerate(logs)
                )
            )
        time.sleep(after)
        stop.set()
        producer.join(timeout=60)
        shared.targets = [newest_event_id(user_id=user.pk) for user in people]
        shared.deadline = time.monotonic() + RECOVERY_BOUND
        shared.done.set()
        clients.join(timeout=RECOVERY_BOUND + 60)
        # Let the last Daphne finish the disconnect handlers of the clients' closes (1,000
        # channel unsubscribes, one at a time under the layer's lock) before its SIGTERM:
        # its shutdown cancels them mid-way, and channels_redis logs each such cleanup
        # with a traceback ("Unexpected exception while cleaning-up channel").
        time.sleep(3)
    finally:
        stop.set()
        shared.done.set()
        shared.deadline = 0.0  # every client returns within a second
        if producer.is_alive():
            producer.join(timeout=60)
        clients.join(timeout=60)
        web.stop()
    return _report(
        logs=logs,
        people=people,
        starts=starts,
        clients_per_user=clients_per_user,
        kill_log=kill_log,
        unrecovered=unrecovered,
        lives=lives,
        made=made[0],
        open_files=open_files,
    )


def _report(
    *,
    logs: list[ClientLog],
    people: list[Any],
    starts: list[int],
    clients_per_user: int,
    kill_log: list[tuple[float, float, list[int]]],
    unrecovered: list[int],
    lives: list[testing.ManagedProcess],
    made: int,
    open_files: int,
) -> Result:
    failures: list[str] = []
    misses: list[str] = []
    # Recovery per client and kill, and the attempts it took.
    recoveries: list[float] = []
    attempts: list[int] = []
    kill_times = [kill_at for kill_at, _, _ in kill_log] + [float("inf")]
    for number, (kill_at, _, snapshot) in enumerate(kill_log):
        for index, log in enumerate(logs):
            done = _recovered(log, kill_at, snapshot[index // clients_per_user])
            if done is not None and done < kill_times[number + 1]:
                recoveries.append(done - kill_at)
                attempts.append(sum(1 for t in log.attempts if kill_at < t <= done))
    restarts = [up_at - kill_at for kill_at, up_at, _ in kill_log]
    # Reconciliation against PostgreSQL.
    missing = twice = out_of_order = 0
    expected_by_user = [
        list(Event.objects.filter(user_id=user.pk, seq__gt=starts[n]).values_list("seq", flat=True))
        for n, user in enumerate(people)
    ]
    for index, log in enumerate(logs):
        expected = expected_by_user[index // clients_per_user]
        missing += len(set(expected) - set(log.seen))
        twice += len(log.seen) - len(set(log.seen))
        out_of_order += sum(1 for a, b in itertools.pairwise(log.seen) if b <= a)
    not_finished = sum(1 for log in logs if not log.finished)
    fatal = Counter(log.fatal for log in logs if log.fatal is not None)
    ends: Counter[Any] = Counter()
    for log in logs:
        ends.update(log.ends)
    tracebacks = sum(life.output.count("Traceback") for life in lives)
    for name, value in (("missing", missing), ("twice", twice), ("out of order", out_of_order)):
        if value:
            failures.append(f"{value} event deliveries {name}")
    for number, value in enumerate(unrecovered, 1):
        if value:
            failures.append(
                f"kill {number}: {value} client(s) not back and caught up within "
                f"{RECOVERY_BOUND:.0f} s"
            )
    if not_finished:
        failures.append(f"{not_finished} client(s) never saw their user's last event")
    if fatal:
        failures.append(f"clients given up on a fatal close code: {dict(fatal)}")
    p50, p99 = _percentile(recoveries, 0.5), _percentile(recoveries, 0.99)
    if recoveries and p99 > RECOVERY_TARGET:
        misses.append(f"p99 back and caught up {p99:.1f} s (target <= {RECOVERY_TARGET:.0f})")
    deliveries = sum(len(log.seen) for log in logs)
    restart_text = ", ".join(f"{x:.1f}" for x in restarts)
    endings = ", ".join(f"{name}: {n}" for name, n in sorted(ends.items(), key=str))
    measured = (
        f"{len(logs)} sockets ({len(people)} users x {clients_per_user}), "
        f"{len(kill_log)} SIGKILL(s) of Daphne, each restarted on its port "
        f"({restart_text} s from the kill to /healthz); backoff 0.5-8 s with jitter: "
        f"back and caught up p50 {p50:.1f} s, p99 {p99:.1f} s, max "
        f"{max(recoveries, default=float('nan')):.1f} s after the kill "
        f"({len(recoveries)} client recoveries), reconnect attempts per recovery "
        f"median {_percentile(attempts, 0.5):.0f}, max {max(attempts, default=0)}; "
        f"{made} creates, {deliveries} deliveries: {missing} missing, {twice} twice, "
        f"{out_of_order} out of order; {sum(unrecovered)} not back; "
        f"socket endings {endings}; tracebacks in Daphne's logs: {tracebacks}"
    )
    figures = {
        "recoveries": recoveries,
        "attempts": attempts,
        "restarts": restarts,
        "open_files": open_files,
        "ends": dict(ends),
        "daphne_logs": [life.output for life in lives],
    }
    return Result("R5", measured, failures, figures, misses)
