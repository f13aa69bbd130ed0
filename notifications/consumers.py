"""The WebSocket consumer at /ws: one connection carries every event of one user.

Thin by design: it decodes frames, enforces the connection's limits and dispatches by
`type` to small handlers; reads go through notifications.selectors' async pool and
writes through notifications.services, never the sync ORM on the event loop.
docs/protocol.md is the client's view of all of this.

What an open socket costs while nothing happens — nothing per socket: no task, no timer,
no query. One SocketHub per process (per event loop) does every socket's housekeeping in
one task: idle timeouts, one pipelined renewal of all registry entries, and one sweep
query for all connected users (lost last pushes, deactivated accounts). A socket that
ends, however it ends (closed, failed, or cancelled by Daphne without disconnect()),
hands its groups and registry entries to the hub, which releases those of every socket
that closed at the same moment in a few pipelined round trips.

Delivery of persisted events (those with an `id`) — why none is sent twice or lost:

* Every persisted frame this socket sends goes through `_deliver_*` under
  `_delivery_lock`, which sends only ids greater than `_last_id` and in increasing order,
  then advances `_last_id`. So no id is sent twice (short of a `resume` that asks for
  it) and ids only increase.
* The user's event log is gap-free and commits in id order (EventCounter's row lock):
  once event N is committed, so is every event below N. A push happens after commit, so
  a live push N lets us read every missing event below N from the database first.
* The socket joins the user's group *before* it reads the log for the welcome/replay.
  An event the read does not see committed after the read began, so its after-commit
  push happens after the group join and is addressed to this socket. Pushes arriving
  while a replay runs wait in the channel layer (Channels dispatches one message at a
  time per consumer) and are then dropped (id <= _last_id) or delivered in order.
* A push that never arrives (Redis pub/sub keeps nothing: a publish while this process
  is not subscribed, during a Redis restart or blip, is gone) is noticed when the next
  push shows a gap, at once when the channel layer reports it reconnected (the hub's
  resync: every socket behind the newest committed id catches up), by the hub's sweep (a
  socket still behind an id the previous sweep saw committed: within
  2 x WS_CATCHUP_INTERVAL), or on reconnect with `last_event_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import psycopg
from autobahn.exception import Disconnected as ClientGone
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from notifications import protocol, selectors, services
from notifications.middleware import (
    close_with,
    forget_user,
    scope_session_key,
    session_group,
    subprotocol_to_accept,
)
from taskhub import gc_policy, metrics, outages
from taskhub.instance import instance_name

logger = logging.getLogger(__name__)

# Close codes (docs/protocol.md, "Close codes").
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_IDLE = 4408
CLOSE_TOO_MANY = 4429
# A backing service (Redis, PostgreSQL) failed at connect: reconnect with backoff. Not
# RFC 6455's 1013: autobahn (Daphne) refuses to send it and closes with 1011 instead.
CLOSE_SERVICE_UNAVAILABLE = 4503

# The consumer's own handlers by client frame type (method names: one table for all
# sockets, not per socket). Other apps' commands (chat's) come from
# protocol.client_command_handlers, which they fill in their AppConfig.ready().
HANDLERS = {
    protocol.PING: "handle_ping",
    protocol.RESUME: "handle_resume",
}

# How long disconnect() waits for its batch of group/registry releases; far below
# Daphne's application close timeout, so a mass close never gets consumers killed.
RELEASE_WAIT = 3.0
# How long an ended socket waits for the unsubscribe of a channel its reader left subscribed.
CHANNEL_DELETE_WAIT = 3.0
# Group discards of one release batch in flight at once (the channel layer's pool must
# never be exhausted by a mass disconnect: MaxConnectionsError).
RELEASE_CONCURRENCY = 32
# Catch-ups the sweep runs at once (each one is a read from the small pool).
CATCHUP_CONCURRENCY = 8


class BadFrame(Exception):
    """A client frame we answer with an `error` (code bad_request/unknown_type)."""

    def __init__(self, code: str, detail: str, ref: Any = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.ref = code, detail, ref


class TokenBucket:
    """`rate` tokens a second, holding at most `rate` (so a burst of `rate` is fine)."""

    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ProgressCoalescer:
    """At most one task.progress per task per PROGRESS_MIN_INTERVAL on this socket.

    Producers already throttle (ProcessorContext); this guards the socket against any
    producer that does not. A frame that comes too soon is held, and only the newest held
    one is sent when the interval is up (so the client always ends on the latest value).
    Progress of a task whose terminal task.updated went out is stale and dropped.
    """

    MAX_TRACKED = 1000

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._send = send
        self._interval = settings.TASKHUB_PROGRESS_MIN_INTERVAL
        self._last_sent: OrderedDict[str, float] = OrderedDict()
        self._held: dict[str, dict[str, Any]] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    async def offer(self, frame: dict[str, Any]) -> None:
        data = frame.get("data") or {}
        task_id = str(data.get("task_id", ""))
        if task_id in self._finished:
            return
        wait = self._last_sent.get(task_id, float("-inf")) + self._interval - time.monotonic()
        if wait <= 0:
            self._held.pop(task_id, None)
            await self._send_now(task_id, frame)
            return
        self._held[task_id] = frame
        if task_id not in self._timers:
            self._timers[task_id] = asyncio.ensure_future(self._flush_later(task_id, wait))

    async def _flush_later(self, task_id: str, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timers.pop(task_id, None)
        frame = self._held.pop(task_id, None)
        if frame is not None:
            await self._send_now(task_id, frame)

    async def _send_now(self, task_id: str, frame: dict[str, Any]) -> None:
        self._last_sent[task_id] = time.monotonic()
        self._last_sent.move_to_end(task_id)
        while len(self._last_sent) > self.MAX_TRACKED:
            self._last_sent.popitem(last=False)
        await self._send(frame)

    def task_updated(self, data: dict[str, Any]) -> None:
        """Follow task.updated: a terminal one ends the task's progress, a retry restarts it."""
        task_id = str(data.get("task_id", ""))
        if data.get("status") in protocol.TASK_TERMINAL_STATUSES:
            self._held.pop(task_id, None)
            timer = self._timers.pop(task_id, None)
            if timer is not None:
                timer.cancel()
            self._last_sent.pop(task_id, None)
            self._finished[task_id] = None
            while len(self._finished) > self.MAX_TRACKED:
                self._finished.popitem(last=False)
        else:
            self._finished.pop(task_id, None)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._held.clear()


class SocketHub:
    """The housekeeping of every open socket of one event loop (one Daphne process).

    One task while any socket is open, waking a few times a second: it closes idle
    sockets, renews all registry entries in one pipelined write every
    WS_PRESENCE_REFRESH, and every WS_CATCHUP_INTERVAL reads, in one query for all
    connected users, whether each is still active and their newest event id. A socket
    still behind an id the previous sweep saw committed missed that push: it catches up
    from the log. Sockets of a deactivated or deleted user are closed with 4401.

    Closed sockets are released in batches (`release`): their registry entries in a few
    pipelines, their groups with bounded concurrency.

    After the channel layer lost Redis and came back (`resync_soon`), pushes in between
    are lost for every socket of the process at once: one resync then catches every socket
    up from the log and re-sends chat history (docs/protocol.md, "After the server lost
    Redis").
    """

    def __init__(self) -> None:
        self.sockets: set[EventConsumer] = set()
        self._task: asyncio.Task[None] | None = None
        self._pending: list[tuple[int | None, str, tuple[str, ...]]] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._resync: asyncio.Task[None] | None = None
        self._resync_again = False
        self._registrations: list[tuple[EventConsumer, asyncio.Future[bool]]] = []
        self._registrar: asyncio.Task[None] | None = None
        self._last_tick_scheduled = False

    def register(self, consumer: EventConsumer) -> asyncio.Future[bool]:
        """services.connection_register for a new socket, batched: the sockets that ask
        in the same loop turn, or while the previous batch is at Redis, go in one pipeline
        (services.connection_register_many: one atomic script call per socket, so the
        per-user cap holds). Daphne's sockets reach this one per turn (each after its own
        SUBSCRIBE reply), so waiting for the batch in flight is what makes batches in a
        storm; alone, a socket waits for nothing. The future is False over the cap and
        raises what the batch raised (Redis down). The hub sets the socket's `_registered`
        itself, so a socket cancelled while it waits still gives its slot back."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._registrations.append((consumer, future))
        if self._registrar is None:
            self._registrar = asyncio.ensure_future(self._register_pending())
        return future

    async def _register_pending(self) -> None:
        try:
            while self._registrations:
                await asyncio.sleep(0)  # let every socket of this loop turn join the batch
                batch, self._registrations = self._registrations, []
                await self._register_batch(batch)
        finally:
            self._registrar = None

    async def _register_batch(
        self, batch: list[tuple[EventConsumer, asyncio.Future[bool]]]
    ) -> None:
        try:
            results = await services.connection_register_many(
                [(consumer.user.pk, consumer.channel_name) for consumer, _ in batch]
            )
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (consumer, future), registered in zip(batch, results, strict=True):
            if registered and consumer._released:
                # It ended while waiting (Daphne cancelled it): its release had no entry.
                self.release(consumer, (consumer.user.pk, consumer.channel_name, ()))
                continue
            consumer._registered = registered
            if not future.done():
                future.set_result(registered)

    def add(self, consumer: EventConsumer) -> None:
        self.sockets.add(consumer)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def release(
        self, consumer: EventConsumer, entry: tuple[int | None, str, tuple[str, ...]] | None
    ) -> asyncio.Future[None] | None:
        """Forget a socket that ended; returns a future done once its groups and registry
        entries are gone (None if it had none)."""
        self.sockets.discard(consumer)
        gc_policy.sockets.socket_closed()
        if not self.sockets:
            if self._task is not None:
                self._task.cancel()  # nothing left to look after: no task lingers
                self._task = None
            if not self._last_tick_scheduled:
                # The ticks stop with the task: the collector gets two more (its full pass
                # becomes due, then runs after its grace; taskhub/gc_policy.py).
                self._last_tick_scheduled = True
                gc_policy.sockets.tick(open_sockets=0)
                asyncio.get_running_loop().call_later(
                    gc_policy.sockets.grace + 0.1, self._last_collector_tick
                )
        if entry is None:
            return None
        self._pending.append(entry)
        if self._pending_done is None:
            loop = asyncio.get_running_loop()
            self._pending_done = loop.create_future()
            # One timer per batch (not per socket): past RELEASE_WAIT its sockets stop
            # waiting, the release itself goes on.
            loop.call_later(RELEASE_WAIT, _stop_waiting, self._pending_done)
        done = self._pending_done
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return done

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # let every socket closing right now join the batch
                batch, done = self._pending, self._pending_done
                self._pending, self._pending_done = [], None
                try:
                    await self._release_batch(batch)
                except Exception as exc:
                    # Registry entries go stale on their own (3 x WS_PRESENCE_REFRESH),
                    # group memberships at group_expiry; nothing waits on a retry.
                    _warn_unless_redis_outage(
                        exc,
                        f"releasing {len(batch)} closed sockets failed",
                        "closed sockets' registry entries expire on their own",
                    )
                if done is not None and not done.done():
                    done.set_result(None)
        finally:
            self._flusher = None

    async def _release_batch(self, batch: list[tuple[int | None, str, tuple[str, ...]]]) -> None:
        registered = [(user_id, channel) for user_id, channel, _ in batch if user_id is not None]
        if registered:
            await services.connection_unregister_many(registered)
        discards = [(group, channel) for _, channel, groups in batch for group in groups]
        if not discards:
            return
        layer = get_channel_layer()
        limit = asyncio.Semaphore(RELEASE_CONCURRENCY)

        async def discard(group: str, channel: str) -> None:
            async with limit:
                try:
                    await layer.group_discard(group, channel)
                except Exception:  # the pub/sub layer's discard is in-process; others expire
                    logger.warning("could not leave group %s", group, exc_info=True)

        await asyncio.gather(*(discard(group, channel) for group, channel in discards))

    def resync_soon(self) -> None:
        """Every socket of this process may have missed pushes (the layer reconnected):
        one resync for all of them, however many sockets report it. A report while one
        runs starts another after it, since that one's reads may predate the new gap."""
        if self._resync is None:
            self._resync = asyncio.ensure_future(self._resync_all())
        else:
            self._resync_again = True

    async def _resync_all(self) -> None:
        try:
            while True:
                self._resync_again = False
                try:
                    await self._sweep(after_reconnect=True)
                    sockets = [c for c in self.sockets if not c._closed]
                    if sockets:
                        # Chat's resend_history, registered by chat (notifications never
                        # imports chat): room broadcasts are not in the per-user log.
                        for resync in protocol.resync_hooks:
                            await resync(sockets)
                except Exception:
                    # The periodic sweep still finds lost persisted events; a chat client
                    # re-subscribes when it reconnects.
                    logger.warning("resync after a channel layer reconnect failed", exc_info=True)
                if not self._resync_again:
                    return
        finally:
            self._resync = None

    def _tick_collector(self) -> None:
        gc_policy.sockets.tick(open_sockets=len(self.sockets))

    def _last_collector_tick(self) -> None:
        self._last_tick_scheduled = False
        self._tick_collector()

    async def _run(self) -> None:
        try:
            await self._look_after_sockets()
        finally:
            # Sockets dropped without release() (idle, deactivated) can empty the set: the
            # next socket must start a new task.
            if self._task is asyncio.current_task():
                self._task = None

    async def _look_after_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        last_refresh = last_sweep = loop.time()
        while self.sockets:
            catchup_every = settings.TASKHUB_WS_CATCHUP_INTERVAL
            tick = min(1.0, settings.TASKHUB_WS_IDLE_TIMEOUT / 4)
            if catchup_every:
                tick = min(tick, catchup_every / 2)
            await asyncio.sleep(max(0.05, tick))
            now = loop.time()
            try:
                self._tick_collector()
                self._close_idle(time.monotonic())
                if now - last_refresh >= settings.TASKHUB_WS_PRESENCE_REFRESH:
                    last_refresh = now
                    await self._refresh()
                if catchup_every and now - last_sweep >= catchup_every:
                    last_sweep = now
                    await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _warn_unless_redis_outage(
                    exc,
                    "websocket housekeeping failed; will retry",
                    "open sockets' registry entries are renewed once it is back",
                )

    def _close_idle(self, now: float) -> None:
        idle = [c for c in self.sockets if not c._closed and now - c._last_seen >= c._idle_timeout]
        for consumer in idle:
            self.sockets.discard(consumer)
            self._spawn(consumer._close_idle())

    async def _refresh(self) -> None:
        sockets = [c for c in self.sockets if c._registered and not c._closed]
        batch_size = services.REFRESH_BATCH
        for start in range(0, len(sockets), batch_size):
            # Each batch is taken as it goes: a socket released while the batches before it
            # were at Redis must not be renewed after its entry was removed.
            batch = [c for c in sockets[start : start + batch_size] if c._registered]
            if batch:
                await services.connection_refresh_many([(c.user.pk, c.channel_name) for c in batch])
        # Re-adding renews a membership before channels_redis' group_expiry drops a
        # long-lived socket from its groups; only sockets that old need it.
        layer = get_channel_layer()
        expiry = getattr(layer, "group_expiry", None)
        if not expiry:
            return
        due = time.monotonic() - expiry / 2
        for consumer in sockets:
            if consumer._groups_renewed_at < due:
                consumer._groups_renewed_at = time.monotonic()
                for group in list(consumer._groups):
                    await layer.group_add(group, consumer.channel_name)

    async def _sweep(self, *, after_reconnect: bool = False) -> None:
        """Close the sockets of deactivated users; catch up the sockets that missed a push.
        Missed means behind what the previous sweep saw committed (a push newer than that
        may still be in flight), or, after a reconnect, behind anything committed: every
        push published while this process was not subscribed is gone."""
        sockets = [c for c in self.sockets if c.user is not None and not c._closed]
        if not sockets:
            return
        state = await selectors.ausers_state(user_ids=list({c.user.pk for c in sockets}))
        limit = asyncio.Semaphore(CATCHUP_CONCURRENCY)
        for consumer in sockets:
            user_state = state.get(consumer.user.pk)
            if user_state is None or not user_state[0]:
                forget_user(consumer.user.pk)
                self.sockets.discard(consumer)
                self._spawn(consumer._close_deactivated())
                continue
            newest = user_state[1]
            seen_before, consumer._sweep_mark = consumer._sweep_mark, newest
            # Behind an id already committed at the previous sweep: that push is lost,
            # not merely in flight.
            if consumer._last_id < (newest if after_reconnect else seen_before):
                self._spawn(consumer._catch_up(limit))


def _stop_waiting(done: asyncio.Future[None]) -> None:
    if not done.done():
        logger.warning("releasing closed sockets takes over %g s; not waiting", RELEASE_WAIT)
        done.set_result(None)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SocketHub] = weakref.WeakKeyDictionary()


def socket_hub() -> SocketHub:
    """The hub of the running event loop."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = SocketHub()
    return hub


def _being_cancelled() -> bool:
    """Whether the running task has a cancel pending (Python 3.11's Task.cancelling())."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EventConsumer(AsyncWebsocketConsumer):
    """One user's socket. Other apps' handlers (chat.ws) use: `user`, `channel_name`,
    `send_frame`, `reply`, `reply_error`, `join_group`, `leave_group`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self._groups: set[str] = set()
        self._closed = False
        self._registered = False
        self._released = False
        self._last_id = 0
        self._sweep_mark = 0
        self._delivery_lock = asyncio.Lock()
        self._last_seen = time.monotonic()
        self._idle_timeout = settings.TASKHUB_WS_IDLE_TIMEOUT
        self._groups_renewed_at = self._last_seen
        self._bad_frames = 0
        self._bucket = TokenBucket(settings.TASKHUB_WS_MAX_MESSAGES_PER_SECOND)
        # Made on the first task.progress: most sockets never need one.
        self._progress: ProgressCoalescer | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Channels' consumer, which first subscribes a new channel in the layer (Redis).
        While Redis is down that raises before connect() runs, and Daphne refused the
        handshake with a 500 and a traceback per socket (a browser sees only 1006): accept
        and close with 4503 instead, logged once per outage (taskhub/outages.py)."""
        try:
            return await self._serve(scope, receive, send)
        except Exception as exc:
            if getattr(self, "channel_name", None) is not None or not outages.is_redis_outage(exc):
                raise  # the socket ran: not a failed subscribe
            outages.REDIS.failed(exc, f"new WebSockets are closed with {CLOSE_SERVICE_UNAVAILABLE}")
            await close_with(CLOSE_SERVICE_UNAVAILABLE, scope, receive, send)

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """channels.consumer.AsyncConsumer.__call__ (Channels 4.3), with its dispatch loop
        replaced by _dispatch_until_stopped, and without its branches for a consumer with
        no channel layer or a sync one (this consumer is neither)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        try:
            with contextlib.suppress(StopConsumer):
                await self._dispatch_until_stopped(receive)
        finally:
            await self._delete_channel()

    async def _delete_channel(self) -> None:
        """Unsubscribe this socket's channel if its reader did not (layers.delete_channel
        says when that happens, and reports a failure). Waited for at most
        CHANNEL_DELETE_WAIT: a Redis that stopped answering does not hold the socket's end
        up, and the unsubscribe goes on without us."""
        delete = getattr(self.channel_layer, "delete_channel", None)
        if delete is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(delete(self.channel_name), CHANNEL_DELETE_WAIT)

    async def _dispatch_until_stopped(self, receive: Callable[[], Awaitable[Any]]) -> None:
        """Dispatch the client's messages (Daphne's `receive`) and the channel layer's
        (pushes, group messages) one at a time, until a handler raises; StopConsumer is
        how websocket_disconnect ends it.

        Channels' own loop (channels.utils.await_many_dispatch) does the same with a new
        task, context and asyncio.wait() for every message, and those live until the
        socket's next message. At 5,000 sockets and 1,000 events/s that was 20,000-30,000
        live objects a second that the garbage collector's young generations had to scan:
        the tick of taskhub/gc_policy.py took 25-130 ms (docs/benchmarks.md, "Delivery:
        the young generation and the housekeeping turns"). Here the client's messages are
        read by this coroutine and the layer's by one task that lives as long as the
        socket, and a lock keeps Channels' rule that a consumer handles one message at a
        time.

        As in Channels, an exception from either side ends both. The reader hands its
        exception over by cancelling this coroutine once the message in hand here is
        done, and this coroutine raises it. If this coroutine ends first (a disconnect,
        its own exception, Daphne's cancel), the reader's exception is logged, not lost."""
        one_at_a_time = asyncio.Lock()
        this_task = asyncio.current_task()
        if this_task is None:  # an ASGI application always runs in a task
            raise RuntimeError("the consumer must run in an asyncio task")
        failure: BaseException | None = None  # what ended the reader, if not this coroutine
        reader_cancelled_us = False

        async def read_layer() -> None:
            nonlocal failure, reader_cancelled_us
            try:
                while True:
                    message = await self.channel_receive()
                    async with one_at_a_time:
                        await self.dispatch(message)
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    raise  # this coroutine's finally ending the reader
                # Something a handler awaited was cancelled. Handed over as it is, it would
                # end the socket as a cancel, which Daphne neither logs nor closes.
                failure = RuntimeError("a channel layer message's handler was cancelled")
                failure.__cause__ = exc
            except BaseException as exc:
                failure = exc
            if _being_cancelled():
                return  # ending anyway: the finally below logs the failure
            async with one_at_a_time:  # not in the middle of a client's message
                reader_cancelled_us = True
                this_task.cancel()

        loop = asyncio.get_running_loop()
        reader = loop.create_task(read_layer(), name=f"layer reader {self.channel_name}")
        handed_over = False
        try:
            while True:
                message = await receive()
                async with one_at_a_time:
                    await self.dispatch(message)
        except asyncio.CancelledError:
            # Cancelled by the reader alone, not by Daphne as well: its exception is ours.
            if reader_cancelled_us and failure is not None and this_task.uncancel() == 0:
                handed_over = True
                raise failure from None
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                # Waiting in receive, as it mostly is, the reader's cancel makes the layer
                # unsubscribe this socket's channel (channels_redis), as in Channels.
                await reader
            if failure is not None and not handed_over and not isinstance(failure, StopConsumer):
                logger.error(
                    "a channel layer message's handler failed as the socket ended",
                    exc_info=failure,
                )

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, less its close_old_connections() before every message: that
        is a hop through the ORM's one shared thread per client frame and per push (9 % of
        a connect storm's samples). This consumer never uses the ORM on the event loop, and
        chat's handlers reach it through database_sync_to_async, which closes stale
        connections itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            # Another app's group message (chat's access checks: register_group_message).
            plugged = protocol.group_message_handlers.get(message["type"])
            if plugged is None:
                raise ValueError(f"No handler for message type {message['type']}")
            if not self._closed and self.user is not None:
                await plugged(self, message)
            return
        await handler(message)

    # --- The API other apps' handlers use ------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one server -> client frame (an envelope) as JSON text."""
        if self._closed:
            return
        try:
            await self.send(text_data=json.dumps(frame, separators=(",", ":"), default=str))
        except ClientGone:
            # Daphne (autobahn) closed the socket while this frame was being made: the
            # client hung up, or sent a malformed frame before its welcome. Nothing more
            # goes to it; the websocket.disconnect that follows releases it.
            self._closed = True

    async def reply(self, type: str, data: dict[str, Any], *, ref: Any = None) -> None:
        """Send an ephemeral frame to this socket only, echoing the client's `ref`."""
        frame = protocol.envelope(type, data)
        if ref is not None:
            frame["ref"] = ref
        await self.send_frame(frame)

    async def reply_error(self, code: str, detail: str, *, ref: Any = None) -> None:
        data: dict[str, Any] = {"code": code, "detail": detail}
        if ref is not None:
            data["ref"] = ref
        await self.reply(protocol.ERROR, data, ref=ref)

    async def join_group(self, group: str) -> None:
        """Join a Channels group; every joined group is left on disconnect."""
        await self.channel_layer.group_add(group, self.channel_name)
        self._groups.add(group)

    async def leave_group(self, group: str) -> None:
        self._groups.discard(group)
        await self.channel_layer.group_discard(group, self.channel_name)

    # --- Connection lifecycle ------------------------------------------------------------

    async def connect(self) -> None:
        # Accept first, then close with a code the client can read (see middleware.py).
        await self.accept(subprotocol_to_accept(self.scope))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.reply_error("unauthenticated", "A valid token or session is required.")
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        # However this socket ends — disconnect(), an error, or Daphne cancelling it
        # without calling disconnect() — its groups and registry entry are released.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self._release())
        try:
            # Batched with the other sockets of this loop turn (SocketHub.register).
            if not await socket_hub().register(self):
                limit = settings.TASKHUB_WS_MAX_CONNECTIONS_PER_USER
                await self.reply_error(
                    "too_many_connections", f"At most {limit} open connections per user."
                )
                await self._close(CLOSE_TOO_MANY)
                return
            # Join before reading the log: see "why none is lost" in the module docstring.
            await self.join_group(protocol.user_group(user.pk))
            # A signed-in page's socket ends when its session logs out (session_revoked).
            session_key = scope_session_key(self.scope)
            if session_key:
                await self.join_group(session_group(session_key))
            async with self._delivery_lock:
                self._last_id = await selectors.anewest_event_id(user_id=user.pk)
            await self.send_frame(self._welcome())
        except Exception as exc:
            _report_setup_failure(exc, user.pk)
            await self._close(CLOSE_SERVICE_UNAVAILABLE)
            return
        if self._closed:  # the client was gone before its welcome (send_frame)
            return
        outages.REDIS.recovered()  # the registry and the layer answered (an attribute check)
        self._idle_timeout = settings.TASKHUB_WS_IDLE_TIMEOUT
        self._sweep_mark = self._last_id
        socket_hub().add(self)
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        if "last_event_id" in query:
            try:
                after_id = parse_event_id(query["last_event_id"][0], from_url=True)
            except BadFrame as bad:
                await self.reply_error(bad.code, bad.detail)
            else:
                await self._resume_from(after_id, ref=None)

    def _welcome(self) -> dict[str, Any]:
        return protocol.envelope(
            protocol.WELCOME,
            {
                "user": {"id": self.user.pk, "username": self.user.get_username()},
                "server_version": settings.TASKHUB_SERVER_VERSION,
                "protocol_version": protocol.PROTOCOL_VERSION,
                "last_event_id": self._last_id,
                "idle_timeout": settings.TASKHUB_WS_IDLE_TIMEOUT,
                # Which web instance holds this socket (docs/scaling.md).
                "server": instance_name(),
            },
        )

    async def disconnect(self, code: int) -> None:
        self._closed = True
        if self._progress is not None:
            self._progress.close()
        done = self._release()
        if done is not None:
            # Bounded (RELEASE_WAIT, see SocketHub.release): the slot is given back before
            # we return, so a reconnect right after finds it free, but a slow Redis never
            # holds the close up for long. Shielded: the batch is shared.
            await asyncio.shield(done)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' websocket_disconnect less its close_old_connections() (see dispatch;
        15 % of the samples of a mass close) and its loop over `self.groups`, which this
        consumer does not use (its groups are released in disconnect())."""
        await self.disconnect(message.get("code", 1000))
        raise StopConsumer()

    def _release(self) -> asyncio.Future[None] | None:
        """Hand this socket's groups and registry entry to the hub (once)."""
        if self._released or self.user is None:
            return None
        self._released = True
        self._closed = True
        if self._progress is not None:
            self._progress.close()
        user_id = self.user.pk if self._registered else None
        groups = tuple(self._groups)
        self._registered = False
        self._groups = set()
        entry = (user_id, self.channel_name, groups) if user_id is not None or groups else None
        try:
            return socket_hub().release(self, entry)
        except RuntimeError:  # no running loop: the loop itself is gone, and Redis with it
            return None

    async def _close(self, code: int) -> None:
        if not self._closed:
            self._closed = True
            await self.close(code=code)

    async def _close_idle(self) -> None:
        idle_timeout = self._idle_timeout
        await self.reply_error("idle", f"Nothing received for {idle_timeout:g} s.")
        await self._close(CLOSE_IDLE)

    async def _close_deactivated(self) -> None:
        await self.reply_error("unauthenticated", "This account is no longer active.")
        await self._close(CLOSE_UNAUTHENTICATED)

    async def session_revoked(self, message: dict[str, Any]) -> None:
        """The account was deactivated or deleted, or the session this socket signed in
        with logged out (taskhub/accounts.py pushes it after commit): close with 4401 now,
        not at the hub's next sweep. Channels hands a consumer one message at a time, so
        no client frame is handled between this and the close."""
        if self._closed or self.user is None:
            return
        socket_hub().sockets.discard(self)
        if message.get("reason") == "logged_out":
            await self.reply_error("unauthenticated", "This session has ended; sign in again.")
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        forget_user(self.user.pk)  # a new socket of this process looks the user up again
        await self._close_deactivated()

    # --- Client -> server ----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closed:
            return
        self._last_seen = time.monotonic()
        size = len(bytes_data) if text_data is None else len(text_data.encode("utf-8"))
        max_bytes = settings.TASKHUB_WS_MAX_FRAME_BYTES
        if size > max_bytes:
            await self.reply_error("too_large", f"Frames are limited to {max_bytes} bytes.")
            await self._close(CLOSE_BAD_REQUEST)
            return
        if not self._bucket.take():
            rate = settings.TASKHUB_WS_MAX_MESSAGES_PER_SECOND
            await self.reply_error("rate_limited", f"At most {rate:g} messages per second.")
            await self._close(CLOSE_TOO_MANY)
            return
        ref = None
        try:
            message = decode_message(text_data)
            ref = message.get("ref")
            handler = HANDLERS.get(message["type"])
            if handler is not None:
                await getattr(self, handler)(message, ref)
            else:
                await self.handle_plugged(message, ref)
        except BadFrame as bad:
            await self._bad_frame(bad)
        except Exception:
            # A bug or a failing backing service in one handler must not end the socket.
            logger.exception("websocket handler failed for user %s", self.user.pk)
            await self.reply_error("internal", "The server could not handle this.", ref=ref)

    async def _bad_frame(self, bad: BadFrame) -> None:
        self._bad_frames += 1
        await self.reply_error(bad.code, bad.detail, ref=bad.ref)
        if self._bad_frames >= settings.TASKHUB_WS_MAX_BAD_FRAMES:
            await self._close(CLOSE_BAD_REQUEST)

    async def handle_ping(self, message: dict[str, Any], ref: Any) -> None:
        await self.reply(protocol.PONG, {}, ref=ref)

    async def handle_resume(self, message: dict[str, Any], ref: Any) -> None:
        await self._resume_from(parse_event_id(message.get("last_event_id"), ref=ref), ref=ref)

    async def handle_plugged(self, message: dict[str, Any], ref: Any) -> None:
        """A command another app registered (protocol.register_client_commands)."""
        type = message["type"]
        handler = protocol.client_command_handlers.get(type)
        if handler is not None:
            await handler(self, message)
        elif type in protocol.PLUGGABLE_COMMANDS:  # a protocol word whose app is not here
            await self.reply_error("unavailable", "Chat is not available yet.", ref=ref)
        else:
            raise BadFrame("unknown_type", f"Unknown message type {type!r}.", ref)

    # --- Server -> client: persisted events ----------------------------------------------

    async def _resume_from(self, after_id: int, *, ref: Any) -> None:
        """Send every persisted event after `after_id`, in order, then carry on live."""
        async with self._delivery_lock:
            newest = await selectors.anewest_event_id(user_id=self.user.pk)
            # An id we never handed out (another server's, a typo) cannot mean "seen up to
            # there": treating it as such would hide later events. Start from the newest.
            after_id = min(after_id, newest)
            oldest = await selectors.aoldest_event_id(user_id=self.user.pk)
            if after_id < newest and (oldest is None or oldest > after_id + 1):
                await self.reply_error(
                    "events_pruned",
                    "Some events after last_event_id are no longer kept; re-read the state "
                    "over the REST API. The events still kept follow.",
                    ref=ref,
                )
            self._last_id = after_id
            await self._deliver_from_log()

    async def _deliver_from_log(self, *, before_id: int | None = None) -> None:
        """Send the log's events after _last_id (and below before_id). Hold the lock."""
        while not self._closed:
            frames = await selectors.aevent_frames_after(
                user_id=self.user.pk, after_id=self._last_id, before_id=before_id
            )
            for frame in frames:
                await self._deliver(frame)
            if len(frames) < selectors.EVENT_PAGE_MAX:
                return

    async def _deliver(self, frame: dict[str, Any]) -> None:
        await self.send_frame(frame)
        self._last_id = frame["id"]
        metrics.EVENTS_DELIVERED.labels(type=frame["type"]).inc()
        if frame["type"] == protocol.TASK_UPDATED:
            data = frame.get("data") or {}
            if self._progress is None and data.get("status") in protocol.TASK_TERMINAL_STATUSES:
                # Late progress of this task must be dropped: now the socket needs one.
                self._progress = ProgressCoalescer(self.send_frame)
            if self._progress is not None:
                self._progress.task_updated(data)

    async def _catch_up(self, limit: asyncio.Semaphore | None = None) -> None:
        """Deliver events whose push never arrived and that no later push revealed (the
        hub's sweep found this socket behind)."""
        async with limit or contextlib.nullcontext(), self._delivery_lock:
            if self._closed:
                return
            newest = await selectors.anewest_event_id(user_id=self.user.pk)
            if newest > self._last_id:
                await self._deliver_from_log(before_id=newest + 1)

    # --- Group messages ------------------------------------------------------------------

    async def layer_reconnected(self, message: dict[str, Any]) -> None:
        """The channel layer's on_reconnect (taskhub/settings.py CHANNEL_LAYERS), sent to
        every socket of this process: pushes were lost while it was away from Redis."""
        socket_hub().resync_soon()

    async def event_push(self, message: dict[str, Any]) -> None:
        """A frame for this socket from a group (user.<id>, a chat room...)."""
        if self._closed or self.user is None:
            return
        frame = message["frame"]
        if message.get("reply_to") == self.channel_name and message.get("ref") is not None:
            frame = {**frame, "ref": message["ref"]}
        event_id = frame.get("id")
        if event_id is None or frame.get("type") not in protocol.PERSISTED_TYPES:
            if frame.get("type") == protocol.TASK_PROGRESS:
                if self._progress is None:
                    self._progress = ProgressCoalescer(self.send_frame)
                await self._progress.offer(frame)
            else:
                await self.send_frame(frame)
            return
        async with self._delivery_lock:
            if event_id <= self._last_id:
                return  # already sent by a replay, a catch-up or a gap fill
            if event_id > self._last_id + 1:
                # A gap: earlier pushes were lost. They are committed (see the docstring).
                await self._deliver_from_log(before_id=event_id)
            await self._deliver(frame)


def _warn_unless_redis_outage(exc: BaseException, message: str, consequence: str) -> None:
    """A hub chore (a release, a renewal) failed: Redis away is the process's one outage
    line (taskhub/outages.py; issue 13, R3: a traceback per chore while it was down), any
    other error a warning with its traceback."""
    if outages.is_redis_outage(exc):
        outages.REDIS.failed(exc, consequence)
    else:
        logger.warning(message, exc_info=exc)


def _report_setup_failure(exc: BaseException, user_id: int) -> None:
    """A connect's set-up failed (the socket is closed with 4503): an outage of Redis or
    PostgreSQL is one log line per outage, anything else a traceback."""
    consequence = f"new WebSockets are closed with {CLOSE_SERVICE_UNAVAILABLE}"
    if outages.is_redis_outage(exc):
        outages.REDIS.failed(exc, consequence)
    elif isinstance(exc, psycopg.OperationalError):  # the sockets' async pool (PoolTimeout too)
        outages.DATABASE.failed(exc, consequence)
    else:
        logger.exception("websocket setup failed for user %s", user_id)


def decode_message(text_data: str | None) -> dict[str, Any]:
    """A client frame as a dict with a string `type`, or BadFrame."""
    if text_data is None:
        raise BadFrame("bad_request", "Binary frames are not supported; send JSON text.")
    try:
        message = json.loads(text_data)
    except ValueError:
        raise BadFrame("bad_request", "The frame is not valid JSON.") from None
    if not isinstance(message, dict):
        raise BadFrame("bad_request", "The frame must be a JSON object.")
    ref = message.get("ref")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, str | int | float)):
        raise BadFrame("bad_request", "ref must be a string or a number.")
    if not isinstance(message.get("type"), str) or not message["type"]:
        raise BadFrame("bad_request", "The frame needs a string `type`.", ref)
    return message


def parse_event_id(value: Any, *, ref: Any = None, from_url: bool = False) -> int:
    """A client's last_event_id: a non-negative integer (in a URL, its digits)."""
    if from_url and isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadFrame("bad_request", "last_event_id must be a non-negative integer.", ref)
    return value
