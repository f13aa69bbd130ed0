"""The measurements, each as a client sees the system (docs/benchmarks.md says what each
figure means). Every loop is bounded in count and in time; a scenario that cannot finish
raises BenchError and the runner records it and goes on with the next one.

Client-side times are `time.perf_counter()` in this process; server-side times are the
Task row's own timestamps (created_at, started_at, finished_at), written by the same
machine's clock.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db.models import Max, Min
from rest_framework_simplejwt.tokens import AccessToken

from bench.client import Db, Socket, open_socket, rss_bytes, task_update
from bench.stack import BenchError
from bench.stats import ratio, summary
from notifications.services import notify
from tasks.models import TERMINAL_STATUSES, Task, TaskStatus

MS = 1000.0
UNFINISHED = (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.IN_PROGRESS)


@dataclass
class Client:
    """The benchmark's user, logged in over the REST API like any client."""

    base_url: str
    http: httpx.AsyncClient
    user_id: int
    token: str
    db: Db
    run_id: str

    async def create_task(self, title: str, **fields: Any) -> dict[str, Any]:
        response = await self.http.post(
            "/api/tasks/", json={"title": title, "kind": "echo", **fields}
        )
        if response.status_code != 201:
            raise BenchError(f"POST /api/tasks/ -> {response.status_code}: {response.text[:300]}")
        return response.json()


async def log_in(base_url: str, db: Db, run_id: str) -> Client:
    """Register a user and get a JWT through /api/auth/register/ and /api/auth/token/."""
    username = f"bench_{run_id}"
    password = f"Bench-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as anon:
        response = await anon.post(
            "/api/auth/register/", json={"username": username, "password": password}
        )
        if response.status_code != 201:
            raise BenchError(f"register -> {response.status_code}: {response.text[:300]}")
        user_id = response.json()["id"]
        response = await anon.post(
            "/api/auth/token/", json={"username": username, "password": password}
        )
        if response.status_code != 200:
            raise BenchError(f"token -> {response.status_code}: {response.text[:300]}")
        token = response.json()["access"]
    http = httpx.AsyncClient(
        base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    )
    return Client(base_url, http, user_id, token, db, run_id)


# --- ORM helpers (run in the Db thread) ----------------------------------------------------


def _insert_pending_task(*, owner_id: int, title: str) -> str:
    """A pending row written straight to the table: no event, and no dispatcher nudge."""
    task = Task.objects.create(
        owner_id=owner_id,
        title=title,
        kind="echo",
        params={},
        timeout=settings.TASKHUB_TASK_DEFAULT_TIMEOUT,
    )
    return str(task.pk)


def _wait_task(task_id: str, *, timeout: float) -> dict[str, Any]:
    """Poll one row until it is finished; its timestamps, or BenchError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = (
            Task.objects.filter(pk=task_id)
            .values("status", "created_at", "queued_at", "started_at", "finished_at")
            .first()
        )
        if row and row["status"] in TERMINAL_STATUSES:
            return row
        time.sleep(0.025)
    raise BenchError(f"task {task_id} not finished within {timeout:g} s")


def _count_unfinished(ids: list[str]) -> int:
    return Task.objects.filter(pk__in=ids, status__in=UNFINISHED).count()


def _wait_all_finished(ids: list[str], *, timeout: float) -> int:
    """Poll until none of `ids` is unfinished or the time is up; how many still are."""
    deadline = time.monotonic() + timeout
    left = _count_unfinished(ids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _count_unfinished(ids)
    return left


def _batch_timings(ids: list[str]) -> dict[str, Any]:
    rows = Task.objects.filter(pk__in=ids)
    bounds = rows.aggregate(first_created=Min("created_at"), last_finished=Max("finished_at"))
    durations = [
        (finished - created).total_seconds()
        for created, finished in rows.filter(finished_at__isnull=False).values_list(
            "created_at", "finished_at"
        )
    ]
    statuses: dict[str, int] = {}
    for status in rows.values_list("status", flat=True):
        statuses[status] = statuses.get(status, 0) + 1
    batches = rows.filter(queued_at__isnull=False).values("queued_at").distinct().count()
    return {**bounds, "durations": durations, "statuses": statuses, "batches": batches}


def _wait_idle(owner_ids: list[int], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Task.objects.filter(owner_id__in=owner_ids, status__in=UNFINISHED).exists():
        if time.monotonic() > deadline:
            raise BenchError(f"tasks still unfinished after {timeout:g} s")
        time.sleep(0.1)


def _notify_many(*, user_id: int, count: int, title: str, timeout: float) -> int:
    """`count` persisted events for one user through the real publish path (notify():
    an inbox row and a notification.new event, pushed after commit)."""
    deadline = time.monotonic() + timeout
    for index in range(count):
        if time.monotonic() > deadline:
            return index
        notify(user_id=user_id, title=f"{title} {index}")
    return count


def _notify_each(*, user_ids: list[int], title: str) -> tuple[dict[int, float], float]:
    """One event for each user, in turn; when each one's publish began, and when the
    last one returned."""
    started: dict[int, float] = {}
    for user_id in user_ids:
        started[user_id] = time.perf_counter()
        notify(user_id=user_id, title=title)
    return started, time.perf_counter()


def _make_users(*, count: int, run_id: str) -> list[tuple[int, str]]:
    """Fan-out users straight in the table, with tokens minted here: registering 50 users
    over REST would hit the sign-up throttle (30/min) and time the password hasher."""
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [
            user_model(username=f"bench_fan_{run_id}_{index}", password=make_password(None))
            for index in range(count)
        ]
    )
    return [(user.pk, str(AccessToken.for_user(user))) for user in users]


# --- 0. Warm-up --------------------------------------------------------------------------


async def warm_up(client: Client) -> None:
    """One task through the whole path and one socket, unmeasured: first requests pay for
    lazy imports and connections in every process."""
    task = await client.create_task("bench warm-up")
    await client.db(_wait_task, task["id"], timeout=30)
    socket, _ = await open_socket(client.base_url, client.token)
    await socket.close()


# --- 1. Start latency ----------------------------------------------------------------------


async def start_latency(client: Client, *, samples: int) -> dict[str, Any]:
    """create -> in_progress of one echo task on an idle system, through REST (the create
    nudges the dispatcher after commit) and as a bare row (only beat's tick finds it).

    The two paths alternate, so drift in the machine's load hits both alike. Beat ticks
    at a fixed phase (every DISPATCH_INTERVAL seconds) and the previous sample ended just
    after some tick; a pause drawn uniformly over exactly one interval makes the insert's
    phase within the tick uniform whatever came before (pauses over a shorter or longer
    span measurably biased the tick-only figure).
    """
    interval = settings.TASKHUB_DISPATCH_INTERVAL
    latencies: dict[str, list[float]] = {"nudge": [], "tick": []}
    # Where the time goes: waiting for the dispatcher (created -> queued) vs. the run
    # message reaching a worker process (queued -> in_progress).
    to_queued: dict[str, list[float]] = {"nudge": [], "tick": []}
    pauses: list[float] = []
    deadline = time.monotonic() + 90
    for index in range(samples):
        for path in ("nudge", "tick"):
            if time.monotonic() > deadline:
                break
            paused_from = time.perf_counter()
            await asyncio.sleep(0.2 + random.uniform(0, interval))
            pauses.append(time.perf_counter() - paused_from)
            title = f"bench start {path} {index}"
            if path == "nudge":
                task_id = (await client.create_task(title))["id"]
            else:
                task_id = await client.db(
                    _insert_pending_task, owner_id=client.user_id, title=title
                )
            row = await client.db(_wait_task, task_id, timeout=15)
            if row["started_at"] is None or row["queued_at"] is None:
                raise BenchError(f"task {task_id} finished {row['status']} without starting")
            latencies[path].append((row["started_at"] - row["created_at"]).total_seconds())
            to_queued[path].append((row["queued_at"] - row["created_at"]).total_seconds())
    nudge = summary(latencies["nudge"], scale=MS)
    tick = summary(latencies["tick"], scale=MS)
    return {
        "unit": "ms",
        "nudge": nudge,
        "tick_only": tick,
        "ratio_tick_over_nudge_p50": ratio(tick.get("p50"), nudge.get("p50")),
        "ratio_tick_over_nudge_p95": ratio(tick.get("p95"), nudge.get("p95")),
        "nudge_created_to_queued": summary(to_queued["nudge"], scale=MS),
        "tick_only_created_to_queued": summary(to_queued["tick"], scale=MS),
        "dispatch_interval_s": interval,
        # The raw samples, in the order taken, to check a distribution or recompute a figure.
        "samples_ms": {
            "nudge": [round(value * MS, 2) for value in latencies["nudge"]],
            "tick_only": [round(value * MS, 2) for value in latencies["tick"]],
            "pauses": [round(value * MS, 1) for value in pauses],
        },
    }


# --- 2. Throughput -------------------------------------------------------------------------


async def throughput(client: Client, *, count: int) -> dict[str, Any]:
    """`count` echo tasks created over REST one after another, as fast as one client can;
    then the time until the last one is completed."""
    await client.db(_wait_idle, [client.user_id], timeout=30)
    ids: list[str] = []
    request_times: list[float] = []
    first_sent_wall = time.time()
    first_sent = time.perf_counter()
    for index in range(count):
        if time.perf_counter() - first_sent > 60:
            break
        sent = time.perf_counter()
        task = await client.create_task(f"bench throughput {index}", params={"i": index})
        ids.append(task["id"])
        request_times.append(time.perf_counter() - sent)
    create_seconds = time.perf_counter() - first_sent
    last_created_wall = time.time()
    left = await client.db(_wait_all_finished, ids, timeout=90)
    timings = await client.db(_batch_timings, ids)
    done = len(ids) - left
    result: dict[str, Any] = {
        "tasks": len(ids),
        "finished": done,
        "statuses": timings["statuses"],
        "create_seconds": round(create_seconds, 3),
        "create_rate_per_s": round(len(ids) / create_seconds, 1),
        "create_request_ms": summary(request_times, scale=MS),
        "task_create_to_finish_ms": summary(timings["durations"], scale=MS),
        # One dispatcher run stamps every task it claims with the same queued_at.
        "dispatcher_runs_that_queued_some": timings["batches"],
        "tasks_queued_per_such_run": round(len(ids) / timings["batches"], 2)
        if timings["batches"]
        else None,
    }
    if left:
        result["error"] = f"{left} of {len(ids)} tasks unfinished after 90 s"
    last_finished = timings["last_finished"]
    if last_finished is not None:
        end_to_end = last_finished.timestamp() - first_sent_wall
        result["end_to_end_seconds"] = round(end_to_end, 3)
        result["tasks_per_s"] = round(done / end_to_end, 1)
        result["drain_after_last_create_s"] = round(
            last_finished.timestamp() - last_created_wall, 3
        )
    return result


# --- 3. Event delivery latency -------------------------------------------------------------


async def event_latency(client: Client, *, count: int) -> dict[str, Any]:
    """With one socket open: from POST /api/tasks/ returning to the task's `pending` frame
    and to its `completed` frame (the POST's send time is kept too)."""
    socket, _ = await open_socket(client.base_url, client.token)
    samples: dict[str, list[float]] = {
        "pending_after_response": [],
        "completed_after_response": [],
        "pending_after_request": [],
        "completed_after_request": [],
    }
    try:
        deadline = time.monotonic() + 60
        for index in range(count):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(random.uniform(0.05, 0.2))
            sent = time.perf_counter()
            task_id = (await client.create_task(f"bench event {index}"))["id"]
            returned = time.perf_counter()
            pending_at, _ = await socket.wait_for(task_update(task_id, "pending"), timeout=10)
            done_at, frame = await socket.wait_for(
                task_update(task_id, *TERMINAL_STATUSES), timeout=15
            )
            if frame["data"]["status"] != TaskStatus.COMPLETED:
                raise BenchError(f"task {task_id} ended {frame['data']['status']}")
            samples["pending_after_response"].append(pending_at - returned)
            samples["completed_after_response"].append(done_at - returned)
            samples["pending_after_request"].append(pending_at - sent)
            samples["completed_after_request"].append(done_at - sent)
    finally:
        await socket.close()
    pushed_first = sum(1 for value in samples["pending_after_response"] if value < 0)
    return {
        "unit": "ms",
        **{name: summary(values, scale=MS) for name, values in samples.items()},
        # The pending event is pushed after the create's commit, before the response is
        # written: the frame can beat the response (a negative latency).
        "pending_frame_before_response": pushed_first,
    }


# --- 4. Resume -----------------------------------------------------------------------------


async def resume(client: Client, *, events: int, rounds: int) -> dict[str, Any]:
    """Disconnect, let `events` persisted events happen, reconnect with ?last_event_id=;
    the time until every missed frame has arrived. Repeated `rounds` times from the same
    last_event_id (each reconnect replays the same backlog)."""
    socket, welcome = await open_socket(client.base_url, client.token)
    last_seen = int(welcome["data"]["last_event_id"])
    await socket.close()

    published_from = time.perf_counter()
    published = await client.db(
        _notify_many,
        user_id=client.user_id,
        count=events,
        title=f"bench resume {client.run_id}",
        timeout=60,
    )
    publish_seconds = time.perf_counter() - published_from
    target = last_seen + published
    expected = list(range(last_seen + 1, target + 1))

    replay_seconds: list[float] = []
    first_frame_seconds: list[float] = []
    problems: list[str] = []
    for _ in range(rounds):
        started = time.perf_counter()
        socket, _ = await open_socket(
            client.base_url, client.token, query=f"last_event_id={last_seen}"
        )
        try:
            finished_at, _ = await socket.wait_for(lambda f: f.get("id") == target, timeout=30)
        finally:
            await socket.close()
        replayed = [f for _, f in socket.frames if "id" in f]
        ids = [f["id"] for f in replayed]
        if ids != expected:
            problems.append(
                f"expected ids {last_seen + 1}..{target} once each in order, got {len(ids)} "
                f"frames ({len(set(ids))} distinct)"
            )
        if replayed:
            first = next(t for t, f in socket.frames if "id" in f)
            first_frame_seconds.append(first - started)
        replay_seconds.append(finished_at - started)
    result: dict[str, Any] = {
        "events": published,
        "publish_seconds": round(publish_seconds, 3),
        "publish_rate_per_s": round(published / publish_seconds, 1),
        "replay_ms": summary(replay_seconds, scale=MS),
        "first_missed_frame_ms": summary(first_frame_seconds, scale=MS),
        "frames_per_s_p50": round(published / (summary(replay_seconds)["p50"]), 1),
        "in_order_no_duplicates": not problems,
    }
    if published < events:
        result["error"] = f"only {published} of {events} events published within 60 s"
    if problems:
        result["error"] = "; ".join(problems)
    return result


# --- 5 and 6. Fan-out and memory -----------------------------------------------------------


async def fanout_and_memory(
    client: Client, *, daphne_pid: int, sockets: int, rounds: int
) -> dict[str, Any]:
    """`sockets` connections of sockets/2 users (two each); each round publishes one event
    per user and waits until every socket has its user's event. Daphne's RSS is sampled
    before the sockets open, while they are open and after they are closed."""
    users = await client.db(_make_users, count=max(1, sockets // 2), run_id=client.run_id)
    rss_idle = await rss_bytes(daphne_pid)

    limit = asyncio.Semaphore(25)
    connect_seconds: list[float] = []

    async def connect(user_id: int, token: str) -> tuple[int, Socket]:
        async with limit:
            started = time.perf_counter()
            socket, _ = await open_socket(client.base_url, token)
            connect_seconds.append(time.perf_counter() - started)
            return user_id, socket

    opened_from = time.perf_counter()
    attempts = [connect(user_id, token) for user_id, token in users for _ in range(2)]
    outcomes = await asyncio.wait_for(asyncio.gather(*attempts, return_exceptions=True), 90)
    open_seconds = time.perf_counter() - opened_from
    connected = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    failures = [str(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    try:
        if failures:
            raise BenchError(f"{len(failures)} of {len(outcomes)} sockets failed: {failures[0]}")
        await asyncio.sleep(1.0)
        rss_open = await rss_bytes(daphne_pid)

        all_seconds: list[float] = []
        producer_seconds: list[float] = []
        per_socket_seconds: list[float] = []
        user_ids = [user_id for user_id, _ in users]
        for round_no in range(rounds):
            title = f"bench fan-out {client.run_id} round {round_no}"

            def is_mine(frame: dict[str, Any], title: str = title) -> bool:
                return frame.get("type") == "notification.new" and (
                    frame["data"].get("title") == title
                )

            waits = [
                asyncio.ensure_future(socket.wait_for(is_mine, timeout=30))
                for _, socket in connected
            ]
            started = time.perf_counter()
            publish_started, published = await client.db(
                _notify_each, user_ids=user_ids, title=title
            )
            arrivals = await asyncio.gather(*waits)
            all_seconds.append(max(arrived for arrived, _ in arrivals) - started)
            producer_seconds.append(published - started)
            per_socket_seconds.extend(
                arrived - publish_started[user_id]
                for (user_id, _), (arrived, _) in zip(connected, arrivals, strict=True)
            )
            await asyncio.sleep(0.3)
        rss_after_rounds = await rss_bytes(daphne_pid)
    finally:
        await asyncio.gather(*(socket.close() for _, socket in connected))
    await asyncio.sleep(1.5)
    rss_closed = await rss_bytes(daphne_pid)
    kib = 1024
    return {
        "fanout": {
            "sockets": len(connected),
            "users": len(users),
            "open_all_seconds": round(open_seconds, 3),
            "connect_ms": summary(connect_seconds, scale=MS),
            "all_sockets_have_event_ms": summary(all_seconds, scale=MS),
            "producer_publish_all_ms": summary(producer_seconds, scale=MS),
            "per_socket_after_its_publish_ms": summary(per_socket_seconds, scale=MS),
        },
        "memory": {
            "daphne_pid": daphne_pid,
            "rss_idle_mib": round(rss_idle / kib / kib, 1),
            "rss_open_mib": round(rss_open / kib / kib, 1),
            "rss_after_fanout_mib": round(rss_after_rounds / kib / kib, 1),
            "rss_after_close_mib": round(rss_closed / kib / kib, 1),
            "per_connection_kib": round((rss_open - rss_idle) / kib / max(1, len(connected)), 1),
        },
    }
