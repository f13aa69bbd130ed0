"""publish(): the one entry point other apps use to tell a user something.

It knows nothing of tasks or chat: callers hand it a type from notifications.protocol
and the data. Persisted events are written in the caller's transaction and pushed to the
user's Channels group only after that transaction commits.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from redis.exceptions import NoScriptError

from notifications import protocol, push, selectors
from notifications.models import Event, Notification
from notifications.redis_client import async_redis
from taskhub import metrics

logger = logging.getLogger(__name__)


def next_event_seq(*, user_id: int) -> int:
    """Take the user's next event number. Call inside a transaction: the counter row stays
    locked until commit, which is what keeps a user's events committing in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifications_eventcounter (user_id, last_seq) VALUES (%s, 1)
            ON CONFLICT (user_id)
            DO UPDATE SET last_seq = notifications_eventcounter.last_seq + 1
            RETURNING last_seq
            """,
            [user_id],
        )
        return int(cursor.fetchone()[0])


# The event and its number in one round trip, through the function migration 0003 made
# (it says why a function): the counter row's upsert takes the user's next number and keeps
# the row locked until commit, exactly as next_event_seq() does. Parameters: user_id, type,
# data, task_id, created_at.
_INSERT_EVENT = "SELECT id, seq FROM notifications_publish_event(%s, %s, %s::jsonb, %s::uuid, %s)"
_EVENT_FIELDS = ["id", "user_id", "seq", "type", "data", "task_id", "created_at"]


def _run_publish(db: BaseDatabaseWrapper, sql: str, params: list[Any]) -> list[tuple[int, int]]:
    """Run `sql` (_INSERT_EVENT, with a write in front of it or not, or _INSERT_EVENTS) on
    Django's connection, in whatever transaction it is in, and return each event's
    (id, seq), in order.

    Why not `connection.cursor()`: publish() is the hottest statement of the product (a
    task's life writes ~5 events, a dispatcher run or a fan-out hundreds), and Django's
    cursor stack (its wrapper, django-prometheus' wrapper, psycopg's client-side binding
    that formats every parameter into the SQL text in Python) was about a quarter of
    publish()'s CPU (py-spy, docs/benchmarks.md, "Publishing: one statement, planned
    once"). A plain psycopg cursor on the same connection binds on the server in the
    same round trip, as an unnamed statement: nothing outlives the statement, so it works
    behind PgBouncer in transaction mode as the ORM does (docs/scaling.md).

    What Django's cursor gave that this keeps by hand: the broken-transaction check, the
    translation of psycopg's errors into django.db's (callers and the outage handling
    catch those), and the query log when queries are logged (DEBUG, assertNumQueries).
    What it gives up: django-prometheus' per-query counters do not count this statement
    (events are counted by taskhub_events_published_total, docs/metrics.md).
    """
    db.close_if_health_check_failed()  # as Django's own cursor() does (conn_health_checks)
    db.ensure_connection()
    db.validate_no_broken_transaction()
    started = time.monotonic()
    try:
        with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
            # Never prepared (Django sets psycopg's prepare_threshold to None): a prepared
            # statement is a server session's state, which PgBouncer does not keep.
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    except BaseException:
        # As atomic(savepoint=False) did, for any exception (a closed connection's
        # InterfaceError, a time limit mid-statement): the caller's transaction is broken
        # now, and Django must refuse further queries in it rather than let PostgreSQL.
        if db.in_atomic_block:
            db.needs_rollback = True
        raise
    if db.queries_logged:
        db.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return rows


def publish(
    *,
    user_id: int,
    type: str,
    data: dict[str, Any],
    task_id: UUID | None = None,
    write: tuple[str, list[Any]] | None = None,
    after_write: Callable[[], None] | None = None,
) -> Event:
    """Persist an event for `user_id` and push it to their sockets after commit.

    Inside a caller's transaction this is a step of the caller's write, not something to
    recover from, so it takes no savepoint of its own: that saves two round trips per
    event, and its push is registered under the caller's savepoints, which lets every
    push of the transaction go out in one batch (notifications/push.py). Outside one, the
    statement is its own transaction (it is one statement: the counter and the event
    commit together or not at all), so no BEGIN and COMMIT round trips either.

    `write`: a data-modifying statement, (sql, params) with `%s` placeholders and no
    RETURNING, to run in the event's statement (a WITH clause in front of it), so the
    caller's row and its event commit together without a transaction: how a task's create
    is one round trip (taskhub/model_insert.py says why). The SQL must be the ORM's own
    (model_insert.insert_statement), never text built from input. Which of the two writes
    PostgreSQL runs first is not specified (a WITH clause nobody reads runs after the main
    query): nothing may depend on the order, such as a non-deferred foreign key or a
    trigger between the two rows. `after_write`: called once that
    statement has run and before the push is registered, for the caller's own after-commit
    callbacks that must run before the push (with no transaction, on_commit runs them at
    once, so they could not be registered earlier: they would run before the write).
    """
    db = transaction.get_connection()  # the thread's wrapper, looked up once (it costs)
    created_at = timezone.now()
    sql = _INSERT_EVENT
    params: list[Any] = [
        user_id,
        type,
        json.dumps(data),
        str(task_id) if task_id is not None else None,
        created_at,
    ]
    if write is not None:
        write_sql, write_params = write
        sql = f"WITH written AS ({write_sql}) {_INSERT_EVENT}"
        params = [*write_params, *params]
    [(pk, seq)] = _run_publish(db, sql, params)
    if after_write is not None:
        after_write()
    event = _published(db, pk, seq, NewEvent(user_id, type, data, task_id), created_at)
    db.on_commit(metrics.EVENTS_PUBLISHED.labels(type=type).inc, robust=True)
    return event


class NewEvent(NamedTuple):
    """One event for publish_many(): publish()'s arguments."""

    user_id: int
    type: str
    data: dict[str, Any]
    task_id: UUID | None = None


# publish_many()'s statement, through the function migration 0004 made (each event through
# notifications_publish_event, in array order). Parameters: user ids, types, data (JSON
# text), task ids, created_at.
_INSERT_EVENTS = (
    "SELECT id, seq FROM notifications_publish_events("
    "%s::integer[], %s::varchar[], %s::jsonb[], %s::uuid[], %s) WITH ORDINALITY "
    "ORDER BY ordinality"
)


def publish_many(events: Sequence[NewEvent]) -> list[Event]:
    """publish() for several events, in one statement: what a transaction that records
    many changes at once (a dispatcher run) calls instead of publish() per event. Each
    user's events are numbered in the order given, and their pushes go out after commit
    in that order, in one batch with the transaction's other pushes (notifications/push.py).
    One statement whatever the count: a dispatcher run of 200 tasks was 200 statements
    (docs/benchmarks.md, "Publishing in batches: one statement")."""
    if len(events) <= 1:
        return [publish(**event._asdict()) for event in events]
    db = transaction.get_connection()
    created_at = timezone.now()
    rows = _run_publish(
        db,
        _INSERT_EVENTS,
        [
            [event.user_id for event in events],
            [event.type for event in events],
            [json.dumps(event.data) for event in events],
            [str(event.task_id) if event.task_id is not None else None for event in events],
            created_at,
        ],
    )
    published = [
        _published(db, pk, seq, event, created_at)
        for (pk, seq), event in zip(rows, events, strict=True)
    ]
    for type, count in Counter(event.type for event in events).items():
        db.on_commit(
            functools.partial(metrics.EVENTS_PUBLISHED.labels(type=type).inc, count), robust=True
        )
    return published


def _published(
    db: BaseDatabaseWrapper, pk: int, seq: int, event: NewEvent, created_at: datetime
) -> Event:
    """The event as written, its push registered for after commit."""
    user_id, type, data, task_id = event
    frame = protocol.envelope(type, data, id=seq, ts=created_at)
    push.push_after_commit(
        group=protocol.user_group(user_id),
        message=_user_message(frame),
        recipient=f"user {user_id}",
        connection=db,
    )
    return Event.from_db(
        db.alias,
        _EVENT_FIELDS,
        [pk, user_id, seq, type, data, UUID(str(task_id)) if task_id else None, created_at],
    )


def publish_ephemeral(*, user_id: int, type: str, data: dict[str, Any]) -> None:
    """Push an event that is not kept (progress, typing); after commit if in a transaction."""
    push_to_user_after_commit(user_id=user_id, frame=protocol.envelope(type, data))


def _user_message(frame: dict[str, Any]) -> dict[str, Any]:
    # What the consumer's event_push handler takes (notifications/consumers.py).
    return {"type": "event.push", "frame": frame}


def push_to_user_after_commit(*, user_id: int, frame: dict[str, Any]) -> None:
    """Send a frame to every socket of the user once the current transaction commits (at
    once outside one). A failed push is logged; persisted events stay in the log and a
    client's resume delivers them."""
    push.push_after_commit(
        group=protocol.user_group(user_id),
        message=_user_message(frame),
        recipient=f"user {user_id}",
    )


def push_to_user_rollback_unsafe(*, user_id: int, frame: dict[str, Any]) -> None:
    """Send a frame to every socket of the user now, committed or not.

    Only call after commit (publish() pushes through push.push_after_commit). A failure
    is logged and swallowed: persisted events stay in the log and a client's resume
    delivers them.
    """
    push.group_send_now(
        [(protocol.user_group(user_id), _user_message(frame))], what=f"user {user_id}"
    )


# --- Inbox -------------------------------------------------------------------------------


def notification_data(notification: Notification) -> dict[str, Any]:
    """The `notification.new` payload and the REST representation of a notification."""
    return {
        "id": notification.pk,
        "title": notification.title,
        "body": notification.body,
        "task_id": str(notification.task_id) if notification.task_id else None,
        "read_at": protocol.format_ts(notification.read_at) if notification.read_at else None,
        "created_at": protocol.format_ts(notification.created_at),
    }


def notify(
    *, user_id: int, title: str, body: str = "", task_id: UUID | None = None
) -> Notification:
    """Put a notification in the user's inbox and tell their sockets (`notification.new`,
    a persisted event), in the caller's transaction (no savepoint, as in publish())."""
    with transaction.atomic(savepoint=False):
        notification = Notification.objects.create(
            user_id=user_id, title=title[:200], body=body, task_id=task_id
        )
        # No task_id on the event itself: a task's history (/api/tasks/{id}/events/) is
        # its task.updated events, one per transition; data.task_id links the two.
        publish(
            user_id=user_id, type=protocol.NOTIFICATION_NEW, data=notification_data(notification)
        )
    return notification


def notification_mark_read(*, notification: Notification) -> Notification:
    """Mark one notification read (idempotent: the first read time stays). The user's open
    pages hear of it (`notification.read`), so every tab's unread count agrees."""
    if notification.read_at is None:
        now = timezone.now()
        updated = Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(
            read_at=now
        )
        if updated:
            notification.read_at = now
            publish_ephemeral(
                user_id=notification.user_id,
                type=protocol.NOTIFICATION_READ,
                data={"ids": [notification.pk], "read_at": now.isoformat()},
            )
        else:
            notification.refresh_from_db(fields=["read_at"])
    return notification


def notification_mark_all_read(*, user: AbstractBaseUser) -> int:
    """Mark every unread notification of the user read; returns how many changed. The
    user's open pages hear of it (`notification.read` with `all`)."""
    now = timezone.now()
    marked = Notification.objects.filter(user=user, read_at__isnull=True).update(read_at=now)
    if marked:
        publish_ephemeral(
            user_id=user.pk,
            type=protocol.NOTIFICATION_READ,
            data={"all": True, "read_at": now.isoformat()},
        )
    return marked


# --- Connection registry (Redis) ---------------------------------------------------------
#
# One sorted set per user and one for all, member = the consumer's channel name, score =
# the time its socket last renewed the entry. A count is the members renewed recently, so
# a server that crashes without unregistering stops being counted after 3 refresh periods
# instead of leaking a connection slot forever (as a plain INCR/DECR counter would).

_REGISTER_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


_register_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _registry_args(*, channel_name: str, limit: int) -> list[Any]:
    now = time.time()
    stale_after = selectors.presence_stale_after()
    return [channel_name, now, now - stale_after, limit, int(stale_after) + 1]


async def connection_register(*, user_id: int, channel_name: str) -> bool:
    """Count a new socket of the user; False (and nothing counted) when the user already
    holds WS_MAX_CONNECTIONS_PER_USER sockets. Check and add are one atomic script, so two
    sockets opening at once cannot both take the last slot."""
    keys = [selectors.user_connections_key(user_id), selectors.CONNECTIONS_KEY]
    args = _registry_args(
        channel_name=channel_name, limit=settings.TASKHUB_WS_MAX_CONNECTIONS_PER_USER
    )
    return bool(await _register_script(async_redis())(keys=keys, args=args))


def _register_script(client: Any) -> Any:
    # EVALSHA (redis-py's Script): a connect storm sends the script's hash, not its text.
    script = _register_scripts.get(client)
    if script is None:
        script = _register_scripts[client] = client.register_script(_REGISTER_SCRIPT)
    return script


async def connection_register_many(entries: list[tuple[int, str]]) -> list[bool]:
    """connection_register for many new sockets, (user_id, channel_name) each, answers in
    the same order: the sockets that connect together (consumers.SocketHub.register).
    Still one script call per socket, so every check-and-add stays atomic and two sockets
    of one user in the batch cannot both take the last slot; but one pipeline and one
    pooled connection for all of them: a call per socket was 9-12 % of a connect storm's
    samples, a third of it in redis-py's pool (docs/benchmarks.md, "Connect path:
    batched registry"). Raises when Redis fails (the whole batch is refused alike)."""
    limit = settings.TASKHUB_WS_MAX_CONNECTIONS_PER_USER
    client = async_redis()
    sha = _register_script(client).sha
    answers: list[Any] = []
    for start in range(0, len(entries), _REGISTRY_BATCH):
        # Plain EVALSHA, not redis-py's Script in a pipeline: that asks SCRIPT EXISTS
        # first, one more round trip per batch (6 % of a connect storm's samples).
        async with client.pipeline(transaction=False) as pipe:
            for user_id, channel_name in entries[start : start + _REGISTRY_BATCH]:
                keys = [selectors.user_connections_key(user_id), selectors.CONNECTIONS_KEY]
                pipe.evalsha(sha, 2, *keys, *_registry_args(channel_name=channel_name, limit=limit))
            answers.extend(await pipe.execute(raise_on_error=False))
    unknown = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
    if unknown:
        # Redis lost its script cache (a restart): NOSCRIPT ran nothing, so those sockets
        # are simply registered again, one script call each, after loading it.
        await client.script_load(_REGISTER_SCRIPT)
        again = await connection_register_many([entries[i] for i in unknown])
        for i, registered in zip(unknown, again, strict=True):
            answers[i] = registered
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return [bool(answer) for answer in answers]


# A batch of registry writes goes out as pipelines of at most this many commands.
_REGISTRY_BATCH = 1000
# The periodic renewal goes out in pipelines of this many sockets (three commands per
# user). redis-py packs a pipeline's commands and parses its replies in one turn of the
# event loop, and every socket of the process waits for that turn: at 5,000 sockets,
# pipelines of 1,000 sockets stopped delivery for 100-165 ms each, once a minute
# (docs/benchmarks.md, "Delivery: the young generation and the housekeeping turns").
REFRESH_BATCH = 200


async def connection_refresh_many(entries: list[tuple[int, str]]) -> None:
    """Renew the entries of many sockets, (user_id, channel_name) each: one process-wide
    renewal every WS_PRESENCE_REFRESH seconds, in pipelines, instead of a timer per socket.
    No limit on a renewal: each socket already holds its slot."""
    now = time.time()
    stale_after = selectors.presence_stale_after()
    ttl = int(stale_after) + 1
    client = async_redis()
    for start in range(0, len(entries), REFRESH_BATCH):
        batch = entries[start : start + REFRESH_BATCH]
        by_user: dict[int, dict[str, float]] = {}
        for user_id, channel_name in batch:
            by_user.setdefault(user_id, {})[channel_name] = now
        async with client.pipeline(transaction=False) as pipe:
            for user_id, members in by_user.items():
                key = selectors.user_connections_key(user_id)
                pipe.zadd(key, members)
                pipe.zremrangebyscore(key, "-inf", now - stale_after)
                pipe.expire(key, ttl)
            pipe.zadd(selectors.CONNECTIONS_KEY, {channel: now for _, channel in batch})
            pipe.zremrangebyscore(selectors.CONNECTIONS_KEY, "-inf", now - stale_after)
            pipe.expire(selectors.CONNECTIONS_KEY, ttl)
            await pipe.execute()


async def connection_unregister_many(entries: list[tuple[int, str]]) -> None:
    """Remove the entries of many closed sockets, (user_id, channel_name) each, in
    pipelines: a mass disconnect costs a few round trips, not two per socket."""
    client = async_redis()
    for start in range(0, len(entries), _REGISTRY_BATCH):
        batch = entries[start : start + _REGISTRY_BATCH]
        by_user: dict[int, list[str]] = {}
        for user_id, channel_name in batch:
            by_user.setdefault(user_id, []).append(channel_name)
        async with client.pipeline(transaction=False) as pipe:
            for user_id, channels in by_user.items():
                pipe.zrem(selectors.user_connections_key(user_id), *channels)
            pipe.zrem(selectors.CONNECTIONS_KEY, *[channel for _, channel in batch])
            await pipe.execute()


async def connection_unregister(*, user_id: int, channel_name: str) -> None:
    await connection_unregister_many([(user_id, channel_name)])


# --- Retention ---------------------------------------------------------------------------


def events_prune(*, older_than: timedelta) -> int:
    """Delete events older than `older_than`; returns how many. A client further behind
    re-reads state over REST instead of resuming (docs/protocol.md, "events_pruned"). The
    counters stay: ids keep growing, so a pruned id is never handed out again."""
    deleted, _ = Event.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted
