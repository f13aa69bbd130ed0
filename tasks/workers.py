"""What Celery knows about the workers and queues, for the operators' view and /metrics.

Reads (`inspect` broadcasts, the broker's queue lengths) and one command (drain a
worker), beside tasks/queue.py, which sends the messages that run TaskHub's tasks. The
celery CLI does the same things (docs/operations.md); this is the same broker, read from
the web process. Nothing here writes TaskHub's state: cancel and retry go through
tasks/services.py.

Each call may raise when the broker is unreachable; callers decide how to degrade (the
view shows the error, a scrape leaves the gauges out).

The view and /metrics share every figure through the cache for a few seconds (`shared`),
so ten open pages and a scraper do not make ten inspect broadcasts (each of which every
worker answers). This module, not taskhub/ops.py, holds them because taskhub/metrics.py
reads them and must not import the views (which import the services, which import the
metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

import redis
from django.conf import settings
from django.core.cache import cache as django_cache

from taskhub.celery import app
from taskhub.outages import is_redis_outage

T = TypeVar("T")

# How long the view and /metrics share one answer (seconds).
WORKERS_CACHE_SECONDS = 3
QUEUES_CACHE_SECONDS = 2
_KEY_PREFIX = "ops:"

# An inspect broadcast waits this long for replies (it has no way to know how many workers
# will answer, so every call takes the whole timeout). Short: a worker busy enough to miss
# it answers the next refresh.
INSPECT_TIMEOUT = 1.0

# Kombu's Redis transport keeps a queue's messages in the list named after it, and those
# sent with a priority in `<queue>\x06\x16<priority>` (its default priority steps).
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def queue_names() -> list[str]:
    """The Celery queues TaskHub declares (settings.CELERY_TASK_QUEUES)."""
    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


@cache
def _broker(url: str) -> redis.Redis:
    # Short timeouts: an unreachable broker must cost a page refresh or a scrape a second,
    # not hang it.
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def read_queue_depths() -> dict[str, int]:
    """Messages waiting in each Celery queue (LLEN of the broker's lists): sent, not yet
    taken by a worker. A worker's prefetched (reserved) messages are not counted: `inspect
    reserved` lists those."""
    client = _broker(settings.CELERY_BROKER_URL)
    names = queue_names()
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for priority in _PRIORITY_STEPS:
                pipe.llen(name if priority == 0 else f"{name}{_PRIORITY_SEPARATOR}{priority}")
        lengths = pipe.execute()
    steps = len(_PRIORITY_STEPS)
    return {name: int(sum(lengths[i * steps : (i + 1) * steps])) for i, name in enumerate(names)}


def inspect_workers() -> list[dict[str, Any]]:
    """Every worker that answered: name, pid, concurrency, queues it consumes, tasks it
    has processed since it started, and its active runs (Celery id, TaskHub task id, kind,
    owner id, attempt: what tasks/queue.py puts in a run message). Sorted by name.

    Three inspect broadcasts (stats, active, active_queues) run side by side, so this
    takes INSPECT_TIMEOUT once, not three times. A worker that answers one and misses
    another (busy) is shown with what it answered.
    """
    # Kombu retries an unreachable broker for seconds before giving up; one PING with a
    # one-second timeout fails at once instead, so a scrape or a refresh during a broker
    # outage stays quick.
    _broker(settings.CELERY_BROKER_URL).ping()
    commands = ("stats", "active", "active_queues")
    with ThreadPoolExecutor(max_workers=len(commands), thread_name_prefix="inspect") as pool:
        futures = {
            command: pool.submit(
                lambda command=command: getattr(
                    app.control.inspect(timeout=INSPECT_TIMEOUT), command
                )()
            )
            for command in commands
        }
        replies = {command: future.result() or {} for command, future in futures.items()}
    answered_at = time.time()
    names = sorted(set().union(*(replies[command].keys() for command in commands)))
    workers = []
    for name in names:
        stats = replies["stats"].get(name) or {}
        pool_stats = stats.get("pool") or {}
        queues = replies["active_queues"].get(name)
        workers.append(
            {
                "name": name,
                "pid": stats.get("pid"),
                "concurrency": pool_stats.get("max-concurrency"),
                "processed": sum((stats.get("total") or {}).values()),
                "uptime": stats.get("uptime"),
                # None: did not answer active_queues; []: consumes nothing (drained).
                "queues": None if queues is None else sorted(q["name"] for q in queues),
                "active": [_run_of(entry) for entry in replies["active"].get(name) or []],
                "answered_at": answered_at,
            }
        )
    return workers


def _run_of(entry: dict[str, Any]) -> dict[str, Any]:
    args = entry.get("args") or []
    kwargs = entry.get("kwargs") or {}
    return {
        "celery_id": entry.get("id"),
        "name": entry.get("name"),
        "task_id": str(args[0]) if args else None,
        "kind": kwargs.get("kind"),
        "owner_id": kwargs.get("owner_id"),
        "attempt": kwargs.get("attempt"),
    }


def worker_drain(*, worker: str, queues: list[str]) -> list[dict[str, Any]]:
    """Stop `worker` consuming `queues` (Celery's cancel_consumer, as `celery control
    cancel_consumer <queue> -d <worker>`): it finishes what it runs and takes nothing new.
    The worker's replies, one per queue (empty if it did not answer)."""
    replies = []
    for queue in queues:
        replies.extend(
            app.control.cancel_consumer(
                queue, destination=[worker], reply=True, timeout=INSPECT_TIMEOUT
            )
            or []
        )
    return replies


# --- Shared through the cache ------------------------------------------------------------


def shared(name: str, seconds: int, compute: Callable[[], T]) -> T:
    """`compute()`'s answer, shared by every process through the cache for `seconds`.

    One process recomputes at a time (cache.add is atomic); the others meanwhile take the
    previous answer, kept ten times longer for that, or compute too if there is none. A
    cache that is down (it is Redis) only costs the sharing."""
    key = _KEY_PREFIX + name
    try:
        entry = django_cache.get(key)
        if entry is not None and time.time() - entry["at"] < seconds:
            return entry["value"]
        if entry is not None and not django_cache.add(f"{key}:lock", 1, timeout=seconds * 2):
            return entry["value"]
    except Exception as exc:
        if not is_redis_outage(exc):
            raise
        return compute()
    value = compute()
    try:
        django_cache.set(key, {"at": time.time(), "value": value}, timeout=seconds * 10)
        django_cache.delete(f"{key}:lock")
    except Exception as exc:
        if not is_redis_outage(exc):
            raise
    return value


def forget_shared(*names: str) -> None:
    """Drop shared answers so the next read is fresh (after an action: seen at once)."""
    try:
        django_cache.delete_many([_KEY_PREFIX + name for name in names])
    except Exception as exc:
        if not is_redis_outage(exc):
            raise


def workers_online() -> list[dict[str, Any]]:
    """inspect_workers(), shared for WORKERS_CACHE_SECONDS."""
    return shared("workers", WORKERS_CACHE_SECONDS, inspect_workers)


def queue_depths() -> dict[str, int]:
    """read_queue_depths(), shared for QUEUES_CACHE_SECONDS."""
    return shared("queues", QUEUES_CACHE_SECONDS, read_queue_depths)
