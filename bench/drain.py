"""A burst of tasks drained by the worker, beside a bare Celery task on the same broker.

Project: `count` echo tasks created with tasks.services.task_create while the worker
does not consume (so the burst is all there when the clock starts), then the worker
resumes and we wait until every task is terminal: tasks/s and worker CPU (the main
process and its pool) per task. That is the dispatcher's runs, the run messages, each
task's transitions and their events.

Prototype (with --proto): the same burst drained by the batched-runs prototype
(bench/proto_drain.py), a worker of its own with the same options, while the project's
worker does not consume.

Reference: the same count of bench_ref.noop messages (bench/ref_celery.py) for a worker
with the same options, queued while it does not consume, then drained.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from bench.measure import CpuMeter, load_1m
from bench.stack import BenchError

# The batched-runs prototype's queue and dispatcher task (bench/proto_drain.py, which
# imports them from here: importing that module sets Django up, this one does not).
PROTO_QUEUE = "bench_proto_drain"
PROTO_DISPATCH = "bench_proto.dispatch"


def node_name(pattern: str) -> str:
    return pattern.replace("%h", socket.gethostname())


def set_consuming(app: Celery, node: str, queues: list[str], on: bool) -> None:
    """Stop or resume a worker's consumption of `queues` (a remote-control broadcast)."""
    for queue in queues:
        if on:
            replies = app.control.add_consumer(queue, destination=[node], reply=True, timeout=5)
        else:
            replies = app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
        if not replies:
            raise BenchError(f"worker {node} did not answer the {queue} consumer change")


def _create_burst(owner_id: int, count: int) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from tasks.services import task_create

    owner = get_user_model().objects.get(pk=owner_id)
    with transaction.atomic():
        return [
            str(task_create(owner=owner, title=f"bench drain {i}", kind="echo", params={"i": i}).pk)
            for i in range(count)
        ]


def _unfinished(ids: list[str]) -> int:
    from tasks.models import TERMINAL_STATUSES, Task

    return Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL_STATUSES).count()


def _wait_finished(
    ids: list[str], deadline_s: float, tick: Callable[[], None] | None = None
) -> int:
    """How many of `ids` are still unfinished when all are, or at the deadline; `tick`
    is called about every DISPATCH_INTERVAL meanwhile."""
    from django.conf import settings

    deadline = time.monotonic() + deadline_s
    next_tick = time.monotonic()
    left = len(ids)
    while left and time.monotonic() < deadline:
        if tick is not None and time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + settings.TASKHUB_DISPATCH_INTERVAL
        time.sleep(0.25)
        left = _unfinished(ids)
    return left


def _cancel_unfinished(ids: list[str]) -> None:
    """A burst given up at its deadline must not run later, in another part's figures."""
    from tasks.models import TERMINAL_STATUSES, Task, TaskStatus

    Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL_STATUSES).update(
        status=TaskStatus.CANCELLED
    )


def _figures(count: int, left: int, meter: CpuMeter, deadline_s: float) -> dict[str, Any]:
    done = count - left
    seconds = meter.spent["wall"]
    result = {
        "tasks": count,
        "finished": done,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(done / seconds, 1),
        "worker_cpu_ms_per_task": meter.per("worker", done),
        "redis_cpu_ms_per_task": meter.per("redis", done),
        **meter.postgres_per(done, "task"),
        "load_1m": load_1m(),
    }
    if left:
        result["error"] = f"{left} of {count} tasks unfinished after {deadline_s:g} s"
    return result


def project(
    *, worker_pid: int, node: str, owner_id: int, count: int, deadline_s: float, redis_url: str
) -> dict[str, Any]:
    from taskhub.celery import app

    queues = ["celery", "dispatch"]
    set_consuming(app, node, queues, on=False)
    try:
        ids = _create_burst(owner_id, count)
    finally:
        set_consuming(app, node, queues, on=True)
    meter = CpuMeter({"worker": worker_pid}, redis_url, children=True).start()
    left = _wait_finished(ids, deadline_s)
    meter.stop()
    if left:
        _cancel_unfinished(ids)
    return _figures(count, left, meter, deadline_s)


def prototype(
    *,
    node: str,
    start_worker: Callable[[], int],
    stop_worker: Callable[[], None],
    owner_id: int,
    count: int,
    deadline_s: float,
    redis_url: str,
) -> dict[str, Any]:
    """The burst drained by bench/proto_drain.py's worker (`start_worker` starts it and
    returns its PID), from its first dispatcher run. The project's worker (`node`) does
    not consume meanwhile (its dispatcher would claim the burst first), and beat's ticks
    go to it: the harness sends the prototype's dispatcher a tick every DISPATCH_INTERVAL
    instead, as beat would."""
    from taskhub.celery import app

    def tick() -> None:
        app.send_task(PROTO_DISPATCH, queue=PROTO_QUEUE, ignore_result=True)

    queues = ["celery", "dispatch"]
    ids: list[str] = []
    set_consuming(app, node, queues, on=False)
    try:
        ids = _create_burst(owner_id, count)
        meter = CpuMeter({"worker": start_worker()}, redis_url, children=True).start()
        left = _wait_finished(ids, deadline_s, tick)
        meter.stop()
    finally:
        # In this order: nothing of the burst may run once the project's worker consumes
        # again. The purge drops what queued up for the project's worker meanwhile (the
        # creates' nudges, beat's dispatcher ticks, the reaper's and retention's runs:
        # each would only have found nothing to do) and the prototype's own queue.
        stop_worker()
        _cancel_unfinished(ids)
        app.control.purge()
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(PROTO_QUEUE)
        set_consuming(app, node, queues, on=True)
    return _figures(count, left, meter, deadline_s)


def reference(
    *, worker_pid: int, node: str, count: int, deadline_s: float, redis_url: str
) -> dict[str, Any]:
    from bench.ref_celery import DONE_KEY, QUEUE, app, noop

    client = redis.Redis.from_url(redis_url)
    client.delete(DONE_KEY)
    set_consuming(app, node, [QUEUE], on=False)
    try:
        with app.producer_or_acquire() as producer:
            for index in range(count):
                noop.apply_async((index,), producer=producer)
    finally:
        set_consuming(app, node, [QUEUE], on=True)
    meter = CpuMeter({"worker": worker_pid}, redis_url, children=True).start()
    deadline = time.monotonic() + deadline_s
    done = 0
    while done < count and time.monotonic() < deadline:
        time.sleep(0.05)
        done = int(client.get(DONE_KEY) or 0)
    meter.stop()
    client.close()
    seconds = meter.spent["wall"]
    return {
        "tasks": count,
        "finished": done,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(done / seconds, 1),
        "worker_cpu_ms_per_task": meter.per("worker", done),
        "redis_cpu_ms_per_task": meter.per("redis", done),
        **meter.postgres_per(done, "task"),
        "load_1m": load_1m(),
    }
