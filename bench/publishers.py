"""Event publishers: separate processes, as Celery workers are, calling the real path.

- `project`: notifications.services.publish(), whatever it does in the tree today (the
  event row, the user's counter, the push after commit). Batched = `batch` events given
  to publish_many() in one transaction, so they are one statement and their pushes go
  out together at its commit (what a dispatcher run does).
- `lean`: the project's SQL and push writer without Django's database layer (see
  `_lean_publisher`): how much of publish()'s cost is Django's.
- `reference`: the bare equivalent in Redis: per event one pipelined round trip of XADD
  to the user's stream (the log a reconnect replays), SET of the user's newest id (what
  a welcome reads) and PUBLISH on the user's channel. Batched = `batch` events in one
  pipeline.

Every frame carries data.t, the wall clock just before the call, so a client computes
the delivery latency. Each process is given a disjoint set of users, so the reference's
per-user id counters need no coordination between processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

REF_LOG = "bench:ref:log:{}"  # the reference's per-user stream
REF_LAST = "bench:ref:last:{}"  # the reference's newest id per user
REF_CHANNEL = "bench:ref:user:{}"  # the reference's per-user pub/sub channel
REF_LOG_MAXLEN = 20000


def _project_publisher() -> Callable[[list[int], int], list[int]]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    import django

    django.setup()
    from django.db import transaction

    from notifications import protocol
    from notifications.services import NewEvent, publish, publish_many

    def send(users: list[int], counter: int) -> list[int]:
        if len(users) == 1:
            data = {"t": time.time(), "n": counter}
            return [publish(user_id=users[0], type=protocol.NOTIFICATION_NEW, data=data).seq]
        with transaction.atomic():
            events = [
                NewEvent(user_id, protocol.NOTIFICATION_NEW, {"t": time.time(), "n": counter + i})
                for i, user_id in enumerate(users)
            ]
            return [event.seq for event in publish_many(events)]

    return send


def _lean_publisher() -> Callable[[list[int], int], list[int]]:
    """What publish() would cost without Django's database layer: the project's own SQL
    (`notifications.services._INSERT_EVENT`, the same rows, counters and order) on a plain
    psycopg connection with a server-side prepared statement, and the project's own push
    writer (notifications/push.py) for the frames. A measurement of the design, not a
    replacement: it drops what publish() gets from Django (the caller's transaction and
    its on_commit batching, query metrics and logging), and prepared statements do not
    survive PgBouncer in transaction mode (docs/scaling.md)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    import django

    django.setup()
    import psycopg
    from channels.layers import get_channel_layer
    from django.conf import settings

    from notifications import protocol, push
    from notifications.services import _INSERT_EVENT

    db = settings.DATABASES["default"]
    conn = psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or None,
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        autocommit=True,
    )
    writer = push._writer_for(get_channel_layer())

    def send(users: list[int], counter: int) -> list[int]:
        ids, messages = [], []
        with conn.transaction():
            for offset, user_id in enumerate(users):
                data = {"t": time.time(), "n": counter + offset}
                now = datetime.now(UTC)
                row = conn.execute(
                    _INSERT_EVENT,  # user_id, type, data, task_id, created_at
                    [user_id, protocol.NOTIFICATION_NEW, json.dumps(data), None, now],
                    prepare=True,
                ).fetchone()
                seq = row[1]
                frame = protocol.envelope(protocol.NOTIFICATION_NEW, data, id=seq, ts=now)
                messages.append(
                    (protocol.user_group(user_id), {"type": "event.push", "frame": frame})
                )
                ids.append(seq)
        writer.send(messages)  # after commit, one pipeline, as push_after_commit batches
        return ids

    return send


def _reference_publisher(
    redis_url: str, all_users: list[int]
) -> Callable[[list[int], int], list[int]]:
    import redis

    client = redis.Redis.from_url(redis_url)
    # Carry on from the ids earlier runs gave these users (a reconnect compares ids).
    newest = client.mget([REF_LAST.format(u) for u in all_users]) if all_users else []
    last = {u: int(v or 0) for u, v in zip(all_users, newest, strict=True)}

    def send(users: list[int], counter: int) -> list[int]:
        pipe = client.pipeline(transaction=False)
        ids = []
        for offset, user_id in enumerate(users):
            last[user_id] += 1
            event_id = last[user_id]
            frame = json.dumps(
                {
                    "type": "notification.new",
                    "id": event_id,
                    "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "data": {"t": time.time(), "n": counter + offset},
                },
                separators=(",", ":"),
            )
            pipe.xadd(
                REF_LOG.format(user_id), {"f": frame}, maxlen=REF_LOG_MAXLEN, approximate=True
            )
            pipe.set(REF_LAST.format(user_id), event_id)
            pipe.publish(REF_CHANNEL.format(user_id), frame)
            ids.append(event_id)
        pipe.execute()
        return ids

    return send


def main(conn: Connection, mode: str, users: list[int], redis_url: str) -> None:
    """Set up (Django takes seconds to import), say ready, wait for `go`, publish."""
    if mode == "project":
        send = _project_publisher()
    elif mode == "lean":
        send = _lean_publisher()
    else:
        send = _reference_publisher(redis_url, users)
    conn.send("ready")
    rate, seconds, max_events, batch = conn.recv()
    published: dict[int, list[int]] = defaultdict(list)
    call_seconds: list[float] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    count = 0
    errors: dict[str, int] = {}
    while count < max_events:
        now = time.perf_counter()
        if now - started >= seconds:
            break
        if rate:
            # Paced to the schedule, not to the previous call: a slow call is followed by
            # calls without pause until the schedule is met again (no drift downwards).
            due = started + count / rate
            if due > now:
                time.sleep(due - now)
        group = [users[(count + i) % len(users)] for i in range(batch)]
        called = time.perf_counter()
        try:
            ids = send(group, count)
        except Exception as exc:  # counted and reported; a publisher never stops early
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            count += batch
            continue
        call_seconds.append(time.perf_counter() - called)
        for user_id, event_id in zip(group, ids, strict=True):
            published[user_id].append(event_id)
        count += batch
    conn.send(
        {
            "published": sum(len(v) for v in published.values()),
            "ids": dict(published),
            "seconds": time.perf_counter() - started,
            "cpu": time.process_time() - cpu_started,
            "call_s": call_seconds,
            "errors": errors,
        }
    )


class Publishers:
    """`processes` publishers of one mode, each with its own share of the users."""

    def __init__(self, mode: str, users: list[int], processes: int, redis_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            share = users[index::processes]
            if not share:
                continue
            parent, child = context.Pipe()
            process = context.Process(
                target=main,
                args=(child, mode, share, redis_url),
                name=f"bench-publish-{index}",
                daemon=True,
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise TimeoutError("a publisher process did not get ready in 120 s")

    def go(self, *, rate: float, seconds: float, max_events: int, batch: int = 1) -> None:
        """Start publishing `rate` events/s in all (0: as fast as each can), until
        `seconds` or `max_events` (both split between the processes)."""
        share = rate / len(self.pipes)
        for pipe in self.pipes:
            pipe.send((share, seconds, max(1, max_events // len(self.pipes)), batch))

    def result(self, timeout: float) -> dict[str, Any]:
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"a publisher gave no result within {timeout:g} s")
            replies.append(pipe.recv())
        for process in self.processes:
            process.join(10)
        ids: dict[int, list[int]] = {}
        for reply in replies:
            ids.update({int(k): v for k, v in reply["ids"].items()})
        seconds = max(r["seconds"] for r in replies)
        published = sum(r["published"] for r in replies)
        errors: dict[str, int] = {}
        for reply in replies:
            for key, value in reply["errors"].items():
                errors[key] = errors.get(key, 0) + value
        return {
            "published": published,
            "ids": ids,
            "seconds": seconds,
            "rate": published / seconds if seconds else None,
            "cpu": sum(r["cpu"] for r in replies),
            "call_s": [s for r in replies for s in r["call_s"]],
            "errors": errors,
        }

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
