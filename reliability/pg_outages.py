"""R2 (issue 13; docs/reliability.md): PostgreSQL restarted again and again while clients
create tasks over REST and gRPC and the tasks run.

A PostgreSQL of the scenario's own (initdb in a temporary directory, a free port:
devserver/own_servers.py; the shared server is never stopped) and a stack on it: one
Daphne, one Celery worker (4 children), beat and the gRPC server, on a Redis of its own
too (a broker shared with another run would hand this run's messages to that run's worker).
Then, for `seconds`:

* a producer creates tasks at `rate` a second, alternately over REST (POST /api/tasks/)
  and gRPC (CreateTask), each with a title of its own to map its answer to its row; one in
  40 runs a few seconds (`simulate` with progress), so some runs and some final status
  writes meet an outage; the rest are `echo`;
* a probe asks /readyz every 0.3 s;
* the faults: PostgreSQL stopped (fast shutdown, as a restart does it), left down for
  `down` seconds, started again on its port with its data, `gap` seconds apart.

At the end, against the database: every 2xx/OK create has exactly one row and it is
terminal (completed, or failed for a reason that is not the reaper's); no answer other than
2xx made a row; the answers met during the outages by status (503 must carry Retry-After;
500 and no answer within the client's timeout are failures; gRPC UNAVAILABLE is the
expected refusal); /readyz not ready while down and ready again after; for each return,
the time to the first 2xx create over each of REST and gRPC and to the first task
completed; the runs that were in progress when PostgreSQL went away and how they ended;
tracebacks and "PostgreSQL unavailable" lines per process.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from django.contrib.auth import get_user_model
from django.db import connection, connections
from google.protobuf import struct_pb2

from devserver import own_servers, testing
from reliability.producer import Answer, Producer, rest_create
from reliability.scenarios import Result, _http, _per_process, _span, token_for
from taskhub.health import READYZ_DATABASE_WAIT
from tasks import services
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.models import TERMINAL_STATUSES, Task

# The Django alias of the scenario's own PostgreSQL (users are made and rows reconciled
# there; the run's own test database is not involved).
ALIAS = "r2_own_postgres"
# Each process must be working again within this long of PostgreSQL's return (issue 13).
RECOVERY_TARGET = 5.0
# A client waits this long for an answer; none is a hang (a failure). Above the pool's
# wait for a connection (DB_POOL_TIMEOUT, 10 s), which is the longest a request should wait.
CLIENT_TIMEOUT = 30.0
PROBE_EVERY = 0.3
# PostgreSQL's client sessions (the stack's pools and this runner's one), counted before
# each stop and 1 s after each return: every process's pool is capped (docs/scaling.md,
# "How many PostgreSQL connections"), so restarts must not add up to max_connections.
CLIENT_CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
# The processes' output of the last run (web.log, grpc.log, worker.log, beat.log).
LOG_DIR = Path(tempfile.gettempdir()) / "taskhub-reliability-r2"


def _use_own_postgres(server: own_servers.OwnPostgres) -> None:
    """Make `ALIAS` a Django connection to the scenario's PostgreSQL (no pool: the runner
    queries it only while it is up)."""
    params = dict(connection.settings_dict)
    params.update(
        NAME="taskhub", USER="postgres", PASSWORD="", HOST="127.0.0.1", PORT=str(server.port)
    )
    params["OPTIONS"] = {k: v for k, v in params.get("OPTIONS", {}).items() if k != "pool"}
    connections.settings[ALIAS] = params
    wrapper = connections.create_connection(ALIAS)
    # A connection of the run's own, not a configured database: under pytest-django (the
    # quick form in reliability/tests) a configured alias the test did not declare is
    # refused, while a connection made this way is allowed, as Django's test case allows
    # any "dynamically created" one. Kept in this thread only (the runner's main thread).
    del connections.settings[ALIAS]
    connections[ALIAS] = wrapper


def _drop_alias() -> None:
    with contextlib.suppress(Exception):
        connections[ALIAS].close()
    connections.settings.pop(ALIAS, None)
    with contextlib.suppress(AttributeError):
        del connections[ALIAS]


# One worker of WORKER_CONCURRENCY children; one create in SLOW_EVERY runs 2-4 s with
# progress (the rest are `echo`): at 20 creates a second that is about one child busy with
# slow runs, so the worker keeps up and a backlog does not hide a recovery.
WORKER_CONCURRENCY = 4
SLOW_EVERY = 40


def _params(serial: int) -> tuple[str, dict[str, Any]]:
    """One in SLOW_EVERY runs 2-4 s with progress, the rest are quick."""
    if serial % SLOW_EVERY == 2:
        return "simulate", {"seconds": round(random.uniform(2, 4), 1), "steps": 4}
    return "echo", {"n": serial}


class Creator:
    """Creates over REST (even serials) and gRPC (odd), a title of its own each."""

    def __init__(self, base_url: str, address: str, tokens: list[str]) -> None:
        self.base_url, self.tokens = base_url, tokens
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.TaskServiceStub(self.channel)

    def __call__(self, serial: int) -> Answer:
        token = self.tokens[serial % len(self.tokens)]
        kind, params = _params(serial)
        if serial % 2 == 0:
            body = {"title": f"r2 rest {serial}", "kind": kind, "params": params}
            return rest_create(self.base_url, token, body, timeout=CLIENT_TIMEOUT)
        title = f"r2 grpc {serial}"
        struct = struct_pb2.Struct()
        struct.update(params)
        request = pb.CreateTaskRequest(title=title, kind=kind, params=struct)
        sent = time.time()
        try:
            task = self.stub.CreateTask(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=CLIENT_TIMEOUT
            )
        except grpc.RpcError as error:
            return Answer("grpc", title, sent, time.time(), error.code().name)
        return Answer("grpc", title, sent, time.time(), "OK", task.id)

    def close(self) -> None:
        self.channel.close()


class ReadyProbe:
    """GET /readyz every PROBE_EVERY s, each in a pool thread (an answer may take seconds),
    every outcome kept as (sent, answered, status)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url, token
        self.probes: list[tuple[float, float, Any]] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="r2-readyz", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(timeout=60)

    def _probe(self) -> None:
        sent = time.time()
        status, _, _ = _http("GET", f"{self.base_url}/readyz", self.token, timeout=CLIENT_TIMEOUT)
        self.probes.append((sent, time.time(), status))

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="r2-probe") as pool:
            while not self.stop.wait(PROBE_EVERY):
                pool.submit(self._probe)


def r2_postgres_outages(
    *,
    seconds: float,
    rate: float,
    gap: tuple[float, float],
    down: tuple[float, float],
    users: int = 10,
) -> Result:
    """R2: see the module's docstring."""
    bin_dir = own_servers.postgres_bin_dir()
    if bin_dir is None:
        return Result("R2", "not run: no PostgreSQL server binaries", ["no initdb/postgres"])
    redis_binary = own_servers.redis_server_binary()
    if redis_binary is None:
        return Result("R2", "not run: no redis-server or valkey-server", ["no Redis server"])
    server = own_servers.OwnPostgres(bin_dir)
    broker = own_servers.OwnRedis(redis_binary, appendonly=False)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    schedule_dir = Path(tempfile.mkdtemp(prefix="reliability-beat-"))
    outages: list[dict[str, Any]] = []
    procs: dict[str, testing.ManagedProcess] = {}
    producer = probe = creator = None
    drain = 0.0
    try:
        server.init()  # from this (the main) thread, which outlives both
        broker.start()
        server.migrate()
        _use_own_postgres(server)
        manager = get_user_model().objects.db_manager(ALIAS)
        people = [manager.create_user(username=f"r2-{n}", password=None) for n in range(users)]
        tokens = [token_for(user) for user in people]
        env = {"DATABASE_URL": server.url, "REDIS_URL": broker.url}
        procs["web"], base_url = testing.start_daphne(extra_env=env)
        procs["grpc"], address = testing.start_grpcserver(extra_env=env)
        procs["worker"] = testing.start_worker(concurrency=WORKER_CONCURRENCY, extra_env=env)
        procs["beat"] = testing.start_beat(schedule_dir=schedule_dir, extra_env=env)
        creator = Creator(base_url, address, tokens)
        # Enough threads for every create of the longest wait (the pool's 10 s) at `rate`.
        producer = Producer(creator, rate, workers=int(rate * 15) + 8, name="r2-producer")
        probe = ReadyProbe(base_url, tokens[0])
        producer.start()
        probe.start()
        time.sleep(3)  # tasks running before the first fault
        ends = time.monotonic() + seconds
        while time.monotonic() < ends - 2:
            running = set(
                Task.objects.using(ALIAS).filter(status="in_progress").values_list("pk", flat=True)
            )
            sessions = [_client_sessions()]
            stopping = time.time()
            server.stop()
            stopped = time.time()
            time.sleep(random.uniform(*down))
            starting = time.time()
            server.start()  # returns once it accepts connections
            back = time.time()
            connections[ALIAS].close()  # its connection died with the server
            time.sleep(1)  # the pools refill: the moment a restart could run out
            sessions.append(_client_sessions())
            outages.append(
                {
                    "stopping": stopping,
                    "stopped": stopped,
                    "starting": starting,
                    "back": back,
                    "running": running,
                    "sessions": sessions,
                }
            )
            time.sleep(min(random.uniform(*gap), max(0.0, ends - time.monotonic())))
        producer.finish()
        probe.finish()

        # Drain: every accepted task terminal, or nothing moved for 60 s (stuck, not slow),
        # bounded by 5 minutes.
        ids = [answer.task_id for answer in producer.answers if answer.ok]
        drain_started = last_move = time.monotonic()
        remaining = -1
        while time.monotonic() - drain_started < 300 and time.monotonic() - last_move < 60:
            left = (
                Task.objects.using(ALIAS)
                .filter(pk__in=ids)
                .exclude(status__in=TERMINAL_STATUSES)
                .count()
            )
            if left == 0:
                break
            if left != remaining:
                remaining, last_move = left, time.monotonic()
            time.sleep(0.5)
        drain = time.monotonic() - drain_started
        return _reconcile(producer, probe, outages, drain, procs, alive_now(procs))
    finally:
        if producer is not None:
            producer.finish()
        if probe is not None:
            probe.finish()
        if creator is not None:
            creator.close()
        for name, process in procs.items():
            process.stop()
            (LOG_DIR / f"{name}.log").write_text(process.output)
        _drop_alias()
        server.remove()
        broker.remove()
        shutil.rmtree(schedule_dir, ignore_errors=True)


def _client_sessions() -> int:
    with connections[ALIAS].cursor() as cursor:
        cursor.execute(CLIENT_CONNECTIONS)
        return cursor.fetchone()[0]


def alive_now(procs: dict[str, testing.ManagedProcess]) -> dict[str, bool]:
    return {name: process.proc.poll() is None for name, process in procs.items()}


def _outage_of(at: float, outages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The outage during which `at` fell (from its stop to its return)."""
    for outage in outages:
        if outage["stopping"] <= at <= outage["back"]:
            return outage
    return None


def _reconcile(
    producer: Producer,
    probe: ReadyProbe,
    outages: list[dict[str, Any]],
    drain: float,
    procs: dict[str, testing.ManagedProcess],
    alive: dict[str, bool],
) -> Result:
    failures: list[str] = []
    misses: list[str] = []
    answers = producer.answers
    tasks = Task.objects.using(ALIAS)

    # Creates: each 2xx/OK exactly one row, that row its answer's; no refused create a row.
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for pk, title, status, error in tasks.filter(title__startswith="r2 ").values_list(
        "pk", "title", "status", "error"
    ):
        rows.setdefault(title, []).append((str(pk), status, error))
    ok = [a for a in answers if a.ok]
    not_once = [a.title for a in ok if len(rows.get(a.title, [])) != 1]
    wrong_row = [a.title for a in ok if rows.get(a.title) and rows[a.title][0][0] != a.task_id]
    refused_with_row = [a for a in answers if not a.ok and a.title in rows]
    if not_once:
        failures.append(f"{len(not_once)} 2xx create(s) without exactly one row: {not_once[:5]}")
    if wrong_row:
        failures.append(f"{len(wrong_row)} 2xx create(s) whose id is not their row's")
    if refused_with_row:
        failures.append(
            f"{len(refused_with_row)} create(s) answered "
            f"{dict(Counter(a.status for a in refused_with_row))} but persisted"
        )
    final = Counter(rows[a.title][0][1] for a in ok if a.title in rows)
    stuck = sum(n for status, n in final.items() if status not in TERMINAL_STATUSES)
    if stuck:
        failures.append(f"{stuck} task(s) not terminal after the drain: {dict(final)}")
    errors = Counter(
        rows[a.title][0][2].split(":")[0][:60]
        for a in ok
        if a.title in rows and rows[a.title][0][1] == "failed"
    )
    reaped = sum(n for reason, n in errors.items() if reason == services.WORKER_LOST[:60])
    if reaped:
        failures.append(f"{reaped} task(s) failed by the reaper")
    if errors:
        misses.append(f"tasks failed: {dict(errors)}")

    # Answers: by channel and status; during an outage or not.
    by_status: dict[str, Counter[Any]] = {"rest": Counter(), "grpc": Counter()}
    during: dict[str, Counter[Any]] = {"rest": Counter(), "grpc": Counter()}
    no_retry_after = 0
    slowest = 0.0
    for answer in answers:
        by_status[answer.channel][answer.status] += 1
        if _outage_of(answer.sent, outages) is not None:
            during[answer.channel][answer.status] += 1
        if answer.status == 503 and not answer.retry_after:
            no_retry_after += 1
        slowest = max(slowest, answer.answered - answer.sent)
    allowed = {"rest": {201, 503}, "grpc": {"OK", "UNAVAILABLE"}}
    for channel, counts in by_status.items():
        wrong = {str(s): n for s, n in counts.items() if s not in allowed[channel]}
        if wrong:
            failures.append(f"{channel} creates answered {wrong}")
    if no_retry_after:
        failures.append(f"{no_retry_after} 503(s) without Retry-After")

    # /readyz: not ready while down (an answer given while PostgreSQL was down), ready again
    # after. A probe held until PostgreSQL was back answers for after, not for during.
    probes = probe.probes
    ready_while_down = [p for p in probes if _down(p[0], outages) and _down(p[1], outages)]
    said_ready = sum(1 for p in ready_while_down if p[2] == 200)
    said_not_ready = sum(1 for p in ready_while_down if p[2] == 503)
    held = [p for p in probes if _down(p[0], outages) and not _down(p[1], outages)]
    if said_ready:
        failures.append(f"/readyz answered 200 {said_ready} time(s) while PostgreSQL was down")
    other = Counter(str(p[2]) for p in probes if p[2] not in (200, 503))
    if other:
        failures.append(f"/readyz answered {dict(other)}")
    unseen = [o for o in outages if not any(_within(p[1], o) for p in ready_while_down)]
    # A probe may wait READYZ_DATABASE_WAIT for a connection: an outage shorter than that
    # and two probe intervals can pass between two answers.
    seen_after = READYZ_DATABASE_WAIT + 2 * PROBE_EVERY + 0.5
    longer = [o for o in unseen if o["starting"] - o["stopped"] > seen_after]
    if longer:
        misses.append(
            f"/readyz said nothing while PostgreSQL was down in {len(longer)} of "
            f"{len(outages)} outages longer than {seen_after:.1f} s "
            f"({len(held)} probes held until it was back)"
        )
    ready_again = []
    for outage in outages:
        first = min((p[1] for p in probes if p[0] >= outage["back"] and p[2] == 200), default=None)
        ready_again.append(None if first is None else first - outage["back"])

    # Recovery after each return: the first 2xx create answered over each channel, the
    # first task completed.
    finished = list(
        tasks.filter(title__startswith="r2 ", status="completed").values_list(
            "finished_at", flat=True
        )
    )
    recovery: dict[str, list[float | None]] = {"rest": [], "grpc": [], "task": []}
    for number, outage in enumerate(outages):
        until = outages[number + 1]["stopping"] if number + 1 < len(outages) else float("inf")
        back = outage["back"]
        for channel in ("rest", "grpc"):
            first = min(
                (a.answered for a in ok if a.channel == channel and back <= a.answered < until),
                default=None,
            )
            recovery[channel].append(None if first is None else first - back)
        first_done = min(
            (f.timestamp() for f in finished if back <= f.timestamp() < until), default=None
        )
        recovery["task"].append(None if first_done is None else first_done - back)
    labels = {"rest": "first REST 201", "grpc": "first gRPC OK", "task": "first task completed"}
    parts = []
    for key, values in {**recovery, "readyz": ready_again}.items():
        label = labels.get(key, "/readyz ready")
        done = [v for v in values if v is not None]
        never = len(values) - len(done)
        parts.append(
            f"{label} {_span(done)}" + (f" ({never} none before the next stop)" if never else "")
        )
        late = [v for v in done if v > RECOVERY_TARGET]
        if late:
            misses.append(
                f"{label}: {len(late)} of {len(values)} later than {RECOVERY_TARGET:.0f} s "
                f"after PostgreSQL was back (max {max(late):.1f} s)"
            )

    # The runs in progress when PostgreSQL went away: how they ended.
    crossed: Counter[str] = Counter()
    for outage in outages:
        for status, error, at in tasks.filter(pk__in=outage["running"]).values_list(
            "status", "error", "finished_at"
        ):
            if at is not None and at.timestamp() >= outage["back"]:
                crossed[status if status != "failed" else f"failed ({error[:40]})"] += 1

    # The processes: alive throughout, tracebacks, outage lines.
    dead = [name for name, up in alive.items() if not up]
    if dead:
        failures.append(f"process(es) exited during the run: {dead}")
    tracebacks = {name: p.output.count("Traceback") for name, p in procs.items()}
    if any(tracebacks.values()):
        failures.append(f"tracebacks in the processes' output: {tracebacks}")
    outage_lines = {
        name: sum("PostgreSQL unavailable" in line for line in p.lines) for name, p in procs.items()
    }
    again_lines = {
        name: sum("PostgreSQL available again" in line for line in p.lines)
        for name, p in procs.items()
    }
    pool_lines = {
        name: sum("error connecting in" in line for line in p.lines) for name, p in procs.items()
    }
    # Log volume, not correctness: beyond one line per outage per process, a miss. A
    # worker's main process and each of its children find out on their own.
    for name, processes in (
        ("web", 1),
        ("grpc", 1),
        ("beat", 1),
        ("worker", 1 + WORKER_CONCURRENCY),
    ):
        if outage_lines.get(name, 0) > processes * len(outages):
            misses.append(
                f"{name}: {outage_lines[name]} 'PostgreSQL unavailable' lines for "
                f"{len(outages)} outages ({processes} process(es))"
            )

    downs = [o["back"] - o["stopping"] for o in outages]
    sessions = [count for o in outages for count in o["sessions"]] or [0]
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SHOW max_connections")
        max_connections = int(cursor.fetchone()[0])
    if max(sessions) > 0.8 * max_connections:
        misses.append(
            f"PostgreSQL client sessions reached {max(sessions)} of max_connections "
            f"{max_connections}"
        )
    measured = (
        f"{len(outages)} PostgreSQL restarts (fast shutdown; down {_span(downs)}), "
        f"{len(answers)} creates at {producer.rate:g}/s over REST {dict(by_status['rest'])} "
        f"and gRPC {dict(by_status['grpc'])}; sent during an outage: REST "
        f"{dict(during['rest'])}, gRPC {dict(during['grpc'])}; slowest answer "
        f"{slowest:.1f} s; {len(ok)} accepted: {len(not_once)} not exactly once, "
        f"{len(refused_with_row)} refused but persisted, {stuck} not terminal (drained "
        f"{drain:.0f} s after the last restart), final {dict(final)}; runs in progress at a "
        f"stop that ended after the return: {dict(crossed) or 'none'}; /readyz while down: "
        f"{said_not_ready} not ready, {said_ready} ready, {len(held)} held until back; after "
        f"each return: {'; '.join(parts)}; tracebacks {_per_process(tracebacks)}; "
        f"'PostgreSQL unavailable' lines {_per_process(outage_lines)} ('available again' "
        f"{_per_process(again_lines)}); psycopg_pool 'error connecting' lines "
        f"{_per_process(pool_lines)}; PostgreSQL client sessions before each stop and 1 s "
        f"after each return "
        f"{min(sessions)}-{max(sessions)} (max_connections {max_connections})"
    )
    return Result(
        "R2",
        measured,
        failures,
        {
            "outages": len(outages),
            "statuses": {k: dict(v) for k, v in by_status.items()},
            "recovery": recovery,
            "ready_again": ready_again,
        },
        misses,
    )


def _within(at: float, outage: dict[str, Any]) -> bool:
    return outage["stopped"] <= at < outage["starting"]


def _down(at: float, outages: list[dict[str, Any]]) -> bool:
    """PostgreSQL had exited and was not yet being started again at `at` (once started it
    accepts connections some time before the runner's poll sees it: `back`)."""
    return any(_within(at, outage) for outage in outages)
