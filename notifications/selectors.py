"""Every read of the event log, the inbox and the connection registry, scoped to one user.

The WebSocket consumer's reads (the `a*` functions at the bottom) do not go through the
ORM: Django's async ORM and database_sync_to_async both run on one shared thread, and
with CONN_MAX_AGE=0 each call opened a new PostgreSQL connection — at a few thousand
sockets that thread was the whole server's bottleneck (docs/benchmarks.md). They use a
few pooled psycopg async connections on the event loop instead.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections
from django.db.models import QuerySet
from django.http import Http404
from psycopg import sql

from notifications import protocol
from notifications.models import Event, EventCounter, Notification
from notifications.redis_client import sync_redis

# The most events one replay query (or one /api/events/ page) loads at once.
EVENT_PAGE_MAX = 500

# Connection registry keys (see services.connection_register).
CONNECTIONS_KEY = "taskhub:ws:connections"


def user_connections_key(user_id: int) -> str:
    return f"taskhub:ws:user:{int(user_id)}"


def presence_stale_after() -> float:
    """An entry not renewed for this long belongs to a socket of a server that died."""
    return 3 * settings.TASKHUB_WS_PRESENCE_REFRESH


# --- Event log ---------------------------------------------------------------------------


def newest_event_id(*, user_id: int) -> int:
    """The last event id handed out for the user, 0 if none.

    The counter, not MAX(seq): retention may have pruned the events themselves. The counter
    row is written in the same transaction as its event, so a committed value N means
    every event up to N has committed too.
    """
    seq = EventCounter.objects.filter(user_id=user_id).values_list("last_seq", flat=True).first()
    return int(seq or 0)


def events_after(
    *, user_id: int, after_id: int, before_id: int | None = None, limit: int = EVENT_PAGE_MAX
) -> list[Event]:
    """The user's events with after_id < seq (< before_id), oldest first, at most `limit`."""
    events = Event.objects.filter(user_id=user_id, seq__gt=after_id)
    if before_id is not None:
        events = events.filter(seq__lt=before_id)
    return list(events.order_by("seq")[: max(1, limit)])


def event_frame(event: Event) -> dict[str, Any]:
    """The envelope of a stored event, identical to the frame publish() pushed."""
    return protocol.envelope(event.type, event.data, id=event.seq, ts=event.created_at)


def oldest_event_id(*, user_id: int) -> int | None:
    """The oldest event still kept for the user (None if none): a resume from further back
    than this cannot be complete, retention pruned the rest."""
    return (
        Event.objects.filter(user_id=user_id).order_by("seq").values_list("seq", flat=True).first()
    )


def task_events_for(*, user: AbstractBaseUser, task_id: UUID | str) -> QuerySet[Event]:
    """The task's events, oldest first, for its owner; Http404 for anybody else (and for an
    unknown task), which must not be told whether the task exists."""
    events = Event.objects.filter(user=user, task_id=task_id).order_by("seq")
    if not events.exists():
        raise Http404("No such task.")
    return events


def task_updates_after(
    *, user: AbstractBaseUser, after_id: int, task_id: UUID | str | None = None
) -> QuerySet[Event]:
    """The user's task events (task.updated, task.deleted) after `after_id` (of one task,
    if given), oldest first: the same read a WebSocket resume makes, served by the
    (user, seq) unique index. gRPC's WatchTasks streams these."""
    events = Event.objects.filter(
        user=user, seq__gt=after_id, type__in=(protocol.TASK_UPDATED, protocol.TASK_DELETED)
    )
    if task_id is not None:
        events = events.filter(task_id=task_id)
    return events.order_by("seq")


# --- Inbox -------------------------------------------------------------------------------


def notification_list_for(*, user: AbstractBaseUser, unread: bool | None = None) -> QuerySet:
    notifications = Notification.objects.filter(user=user).order_by("-created_at", "-id")
    if unread is True:
        notifications = notifications.filter(read_at__isnull=True)
    elif unread is False:
        notifications = notifications.filter(read_at__isnull=False)
    return notifications


def notification_unread_count(*, user: AbstractBaseUser) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def notification_get_for(*, user: AbstractBaseUser, notification_id: int) -> Notification:
    notification = Notification.objects.filter(user=user, pk=notification_id).first()
    if notification is None:
        raise Http404("No such notification.")
    return notification


# --- Connection registry -----------------------------------------------------------------


def active_connection_count() -> int:
    """Open WebSocket connections across every web instance (the source of the
    taskhub_websocket_connections gauge). Entries of a crashed instance stop counting once
    they go stale (3 x WS_PRESENCE_REFRESH)."""
    cutoff = time.time() - presence_stale_after()
    return int(sync_redis().zcount(CONNECTIONS_KEY, f"({cutoff}", "+inf"))


def user_connection_count(*, user_id: int) -> int:
    cutoff = time.time() - presence_stale_after()
    return int(sync_redis().zcount(user_connections_key(user_id), f"({cutoff}", "+inf"))


# --- Async reads for the WebSocket consumer ---------------------------------------------
#
# One small, bounded pool per event loop (an asyncio connection belongs to the loop it was
# made on; Daphne has one loop per process, tests one per test). A read takes well under a
# millisecond, so a few connections serve thousands of sockets; a burst waits for a free
# connection (up to WS_DB_POOL_TIMEOUT) rather than opening more.
#
# Not psycopg_pool's AsyncConnectionPool: its maintenance runs in background tasks that
# retry a failed connect with backoff for minutes, even when cancelled mid-connect — an
# event loop being shut down (every test's) then never finished. This pool has no task of
# its own: a connection is made by the read that needs it, in the reader's task.


class _LoopPool:
    def __init__(self, *, max_size: int, timeout: float, read_timeout: float) -> None:
        self.kwargs = _pool_kwargs()
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.slots = asyncio.Semaphore(max_size)
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        # Reads by key waiting for the next batched query, per kind (see _batched).
        self.batches: dict[str, dict[Any, asyncio.Future[Any]]] = {}
        self.batch_tasks: set[asyncio.Task[None]] = set()

    async def fetch(self, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read, within read_timeout in all. Without that bound a database
        host gone silent holds a read for the kernel's TCP user timeout (DB_TCP_USER_TIMEOUT,
        60 s) on every idle connection it retries on, then for a connect: minutes in which
        the socket gets no welcome and its slot serves no one. Past it the read fails as an
        outage (the connect is closed with 4503); the connection it was on is closed.

        One bound this does not set: a query cut off mid-flight is first cancelled on the
        server by psycopg (its own limits: 5 s to send the cancel, 5 s for the query to
        end, then it drops the connection and logs a warning). A server that answers takes
        milliseconds; a silent host adds up to those 10 s."""
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._fetch_in_time(query, params)
        except TimeoutError:
            raise psycopg.OperationalError(
                f"a read of the sockets' pool took over {self.read_timeout:g} s"
                " (WS_DB_READ_TIMEOUT)"
            ) from None

    async def _fetch_in_time(self, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            # Not asyncio.wait_for: on Python 3.11 it can swallow the cancel of the
            # enclosing time limit when the slot comes in the same turn.
            async with asyncio.timeout(self.timeout):
                await self.slots.acquire()
        except TimeoutError:
            raise psycopg.OperationalError("no free connection in the sockets' pool") from None
        try:
            while self.idle:
                # A reused connection may have died (a PostgreSQL restart): a read is
                # idempotent, so drop that connection and read again on the next one.
                conn = self.idle.pop()
                try:
                    return await self._run(conn, query, params)
                except psycopg.OperationalError:
                    await conn.close()
            conn = await psycopg.AsyncConnection.connect(**self.kwargs)
            return await self._run(conn, query, params)
        finally:
            self.slots.release()

    async def _run(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: list[Any]
    ) -> list[tuple[Any, ...]]:
        try:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
        except BaseException:
            # Cancelled mid-query or failed: the connection's state is unknown.
            if not conn.closed:
                await asyncio.shield(conn.close())
            raise
        self.idle.append(conn)
        return rows

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = (
    weakref.WeakKeyDictionary()
)


def _pool_kwargs() -> dict[str, Any]:
    """The connection parameters Django itself uses (read when the pool is made, so tests
    get pytest-django's test database), less the sync ORM's own adapters."""
    params = connections["default"].get_connection_params()
    for key in ("cursor_factory", "context"):
        params.pop(key, None)
    params["autocommit"] = True  # single-statement reads: no transaction to hold open
    # Never server-side prepared statements: psycopg prepares a query after 5 runs on one
    # connection, and behind PgBouncer in transaction mode (docs/scaling.md) the next run
    # may land on another server session, where the statement does not exist. The sync
    # ORM never prepares (Django's client-side binding); the reads here are tiny.
    params["prepare_threshold"] = None
    return params


def _pool() -> _LoopPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = _LoopPool(
            max_size=settings.TASKHUB_WS_DB_POOL_SIZE,
            timeout=settings.TASKHUB_WS_DB_POOL_TIMEOUT,
            read_timeout=settings.TASKHUB_WS_DB_READ_TIMEOUT,
        )
        _close_with_loop(loop)
    return pool


def _close_with_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close the loop's pool when the loop is closed, so that no PostgreSQL session
    outlives it (as channels_redis does for its pools)."""
    original_close = loop.close

    def close() -> None:
        loop.close = original_close  # type: ignore[method-assign]
        pool = _pools.pop(loop, None)
        if pool is not None and pool.idle and not loop.is_running():
            loop.run_until_complete(pool.close())
        original_close()

    loop.close = close  # type: ignore[method-assign]


async def close_async_pool() -> None:
    """Close the running loop's pool (tests call this before their loop goes away)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


async def _fetch(query: str, params: list[Any]) -> list[tuple[Any, ...]]:
    return await _pool().fetch(query, params)


async def _batched(
    kind: str, key: Any, fetch_many: Callable[[list[Any]], Awaitable[dict[Any, Any]]]
) -> Any:
    """The value of `key`, read together with every other read of the same kind that
    arrives in the same turn of the event loop: a storm of connects costs a few queries
    with `= ANY(...)`, not one round trip each."""
    pool = _pool()
    pending = pool.batches.setdefault(kind, {})
    future = pending.get(key)
    if future is None:
        loop = asyncio.get_running_loop()
        if not pending:
            loop.call_soon(_start_batch, pool, kind, fetch_many)
        future = pending[key] = loop.create_future()
    # Shielded: a waiter that is cancelled (its socket went) must not cancel the others'.
    return await asyncio.shield(future)


def _start_batch(
    pool: _LoopPool, kind: str, fetch_many: Callable[[list[Any]], Awaitable[dict[Any, Any]]]
) -> None:
    futures = pool.batches.pop(kind, {})

    async def run() -> None:
        try:
            values = await fetch_many(list(futures))
        except BaseException as exc:
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: waiters that went away log nothing
            if not isinstance(exc, Exception):
                raise
            return
        for key, future in futures.items():
            if not future.done():
                future.set_result(values.get(key))

    task = asyncio.ensure_future(run())
    pool.batch_tasks.add(task)
    task.add_done_callback(pool.batch_tasks.discard)


def _table(model: Any) -> sql.Identifier:
    return sql.Identifier(model._meta.db_table)


def _column(model: Any, name: str) -> sql.Identifier:
    return sql.Identifier(model._meta.get_field(name).column)


@functools.cache
def _query(name: str) -> str:
    """The consumer's queries, composed once (table and column names from the models)."""
    user_model = get_user_model()
    counters, events, users = _table(EventCounter), _table(Event), _table(user_model)
    if name == "newest":
        query = sql.SQL("SELECT user_id, last_seq FROM {} WHERE user_id = ANY(%s)").format(counters)
    elif name == "oldest":
        query = sql.SQL("SELECT min(seq) FROM {} WHERE user_id = %s").format(events)
    elif name == "events":
        query = sql.SQL(
            "SELECT seq, type, data, created_at FROM {} WHERE user_id = %s AND seq > %s"
            " AND seq < %s ORDER BY seq LIMIT %s"
        ).format(events)
    elif name == "users_state":
        has_active = any(f.name == "is_active" for f in user_model._meta.concrete_fields)
        active = _column(user_model, "is_active") if has_active else sql.SQL("TRUE")
        pk = _column(user_model, user_model._meta.pk.name)
        query = sql.SQL(
            "SELECT u.{pk}, u.{active}, coalesce(c.last_seq, 0) FROM {users} u"
            " LEFT JOIN {counters} c ON c.user_id = u.{pk} WHERE u.{pk} = ANY(%s)"
        ).format(pk=pk, active=active, users=users, counters=counters)
    else:
        raise ValueError(name)
    return query.as_string(None)


async def _newest_event_ids(user_ids: list[int]) -> dict[int, int]:
    rows = await _fetch(_query("newest"), [user_ids])
    return {user_id: int(last_seq) for user_id, last_seq in rows}


async def anewest_event_id(*, user_id: int) -> int:
    """newest_event_id() on the event loop (batched with concurrent reads)."""
    return await _batched("newest", int(user_id), _newest_event_ids) or 0


async def aoldest_event_id(*, user_id: int) -> int | None:
    """oldest_event_id() on the event loop."""
    rows = await _fetch(_query("oldest"), [user_id])
    return rows[0][0]


async def aevent_frames_after(
    *, user_id: int, after_id: int, before_id: int | None = None, limit: int = EVENT_PAGE_MAX
) -> list[dict[str, Any]]:
    """events_after() as frames (event_frame()), on the event loop."""
    before = before_id if before_id is not None else 2**63 - 1
    rows = await _fetch(_query("events"), [user_id, after_id, before, max(1, limit)])
    return [protocol.envelope(type, data, id=seq, ts=created) for seq, type, data, created in rows]


# Users per query of ausers_state. Each query's rows are decoded in one turn of the event
# loop that every socket of the process waits for: 5,000 at once made a 112 ms turn, 72 ms
# of it a garbage collection its rows set off
# (docs/benchmarks.md, "Delivery: the young generation and the housekeeping turns").
USERS_STATE_BATCH = 1000


async def ausers_state(*, user_ids: list[int]) -> dict[int, tuple[bool, int]]:
    """For each of `user_ids` that still exists: (is_active, newest event id). One query
    for every connected user of a process (the consumer's sweep)."""
    state: dict[int, tuple[bool, int]] = {}
    for start in range(0, len(user_ids), USERS_STATE_BATCH):
        for user_id, is_active, newest in await _fetch(
            _query("users_state"), [user_ids[start : start + USERS_STATE_BATCH]]
        ):
            state[user_id] = (bool(is_active), int(newest))
    return state


async def aactive_user(*, lookup_field: str, value: Any) -> Any:
    """The active user whose `lookup_field` is `value`, or None — with only the primary
    key, the username and is_active loaded (the rest is deferred: the consumer needs
    no more, and chat's handlers load the rest in their thread if they ever touch it).
    Batched with concurrent lookups."""
    try:
        value = get_user_model()._meta.get_field(lookup_field).to_python(value)
    except Exception:  # a claim that cannot be this field's value names nobody
        return None
    return await _batched(
        f"user:{lookup_field}", value, functools.partial(_active_users, lookup_field)
    )


@functools.cache
def _user_fields(lookup_field: str) -> tuple[list[str], str]:
    """The attnames a socket's user is loaded with, in from_db's order, and the query."""
    user_model = get_user_model()
    meta = user_model._meta
    wanted = {meta.pk.attname, meta.get_field(user_model.USERNAME_FIELD).attname, "is_active"}
    fields = [f for f in meta.concrete_fields if f.attname in wanted]
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} = ANY(%s)").format(
        sql.SQL(", ").join(sql.Identifier(f.column) for f in fields),
        _column(user_model, lookup_field),
        _table(user_model),
        _column(user_model, lookup_field),
    )
    return [f.attname for f in fields], query.as_string(None)


async def _active_users(lookup_field: str, values: list[Any]) -> dict[Any, Any]:
    user_model = get_user_model()
    attnames, query = _user_fields(lookup_field)
    users = {}
    for row in await _fetch(query, [values]):
        user = user_model.from_db("default", attnames, row[:-1])
        if getattr(user, "is_active", True):
            users[row[-1]] = user
    return users
