"""Pushing frames to Channels groups from sync code: Celery workers, sync views, commands.

Why not `async_to_sync(layer.group_send)`: in a Celery worker there is no event loop to
hop back to, so every call started a thread and an event loop, and channels_redis (which
keeps its connection pools per loop) opened a new Redis connection for it and dropped it
again. Profiled (docs/benchmarks.md): 4.7-7.1 ms of CPU per pushed event, most of a
worker's CPU per task.

What happens instead, with the configured pub/sub layer (notifications/layers.py): this
process PUBLISHes what the layer's `group_send` would, with a plain redis-py client it
keeps for its lifetime, one pipeline per Redis shard per batch. The layer itself names the
Redis channel of a group (its prefix, `__group__`), picks its shard and serializes the
message (msgpack), so a consumer cannot tell these publishes from the layer's own. Naming
and sharding are methods of channels_redis 4.3's loop layer (pinned in requirements.txt):
an upgrade must re-read channels_redis/pubsub.py `group_send`; the tests in
notifications/tests/test_push_path.py go through real consumers to catch a mismatch. Any
other layer gets its own `group_send` run on an event loop this process keeps, which also
keeps that layer's connections.

A publish reaches the sockets subscribed at that moment and is kept nowhere: a push lost
to a Redis outage is found by the consumers (docs/architecture.md, "The event path").

Per process, fork-safe: the client or loop belongs to the pid that made it; a forked child
(Celery's prefork pool) makes its own on first use instead of writing on its parent's
sockets.

Batching: pushes registered with `push_after_commit` in one transaction are sent together
after it commits (a dispatcher run or a fan-out is one round trip, not one per event), in
order. See `_Push.run` for how that stays correct with savepoints.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections import deque
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskhub.outages import REDIS, is_redis_outage

logger = logging.getLogger("notifications.services")

# A (group, message) pair, the arguments of group_send.
GroupMessage = tuple[str, dict[str, Any]]

# A publisher must not hang on a Redis that stopped answering.
_SOCKET_TIMEOUT = 5.0


class _PubSubWriter:
    """group_send for a RedisPubSubChannelLayer, as pipelined sync PUBLISHes."""

    def __init__(self, layer: RedisPubSubChannelLayer) -> None:
        self.layer = layer
        self.pid = os.getpid()
        # The layer's per-loop half, never run: it names groups' channels and picks
        # shards exactly as group_send does (it opens no connection until used).
        self.naming = RedisPubSubLoopLayer(*layer._args, **layer._kwargs, channel_layer=layer)
        self.clients = [self._client(shard.host) for shard in self.naming._shards]

    @staticmethod
    def supports(layer: Any) -> bool:
        if not isinstance(layer, RedisPubSubChannelLayer):
            return False
        naming = RedisPubSubLoopLayer(*layer._args, **layer._kwargs, channel_layer=layer)
        return all("address" in shard.host for shard in naming._shards)

    @staticmethod
    def _client(host: dict[str, Any]) -> redis.Redis:
        options = {k: v for k, v in host.items() if k != "address"}
        if options.get("socket_timeout") is None:
            options["socket_timeout"] = _SOCKET_TIMEOUT
        options.setdefault("socket_connect_timeout", _SOCKET_TIMEOUT)
        # No retry: a push is sent at most once (a retried pipeline may publish twice),
        # and a Redis that is down fails it at once instead of after redis-py's default
        # backoff of seconds, per event. The pool itself replaces a connection that a
        # Redis restart closed before handing it out, so the first push after one goes
        # through.
        options["retry"] = Retry(NoBackoff(), 0)
        return redis.Redis.from_url(host["address"], **options)

    def send(self, messages: list[GroupMessage]) -> None:
        naming, serialize = self.naming, self.layer.serialize
        pipes: dict[int, Any] = {}
        for group, message in messages:
            channel = naming._get_group_channel_name(group)
            shard = naming._shards.index(naming._get_shard(channel))
            pipe = pipes.get(shard)
            if pipe is None:
                pipe = pipes[shard] = self.clients[shard].pipeline(transaction=False)
            pipe.publish(channel, serialize(message))
        # A group lives on one shard, so each group's messages keep their order.
        for pipe in pipes.values():
            pipe.execute()

    def close(self) -> None:
        for client in self.clients:
            client.close()


class _LoopWriter:
    """Any other layer: its own group_send on an event loop kept by this process, so its
    connections are kept too (a layer's pools belong to the loop they were made on)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()

    async def _send(self, messages: list[GroupMessage]) -> None:
        for group, message in messages:
            await self.layer.group_send(group, message)

    def send(self, messages: list[GroupMessage]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with self.lock:  # one loop, run by one thread at a time
                self.loop.run_until_complete(self._send(messages))
        else:  # called on a thread that runs a loop of its own: hop through asgiref
            async_to_sync(self._send)(messages)

    def close(self) -> None:
        with self.lock:
            self.loop.close()  # channels_redis hooks this to close the layer's connections


_writer: _PubSubWriter | _LoopWriter | None = None
_writer_lock = threading.Lock()


def _writer_for(layer: Any) -> _PubSubWriter | _LoopWriter:
    """This process's writer for `layer` (made on first use, again after a fork or when the
    settings give a new layer)."""
    global _writer
    writer = _writer
    if writer is None or writer.pid != os.getpid() or writer.layer is not layer:
        with _writer_lock:
            writer = _writer
            if writer is None or writer.pid != os.getpid() or writer.layer is not layer:
                if writer is not None and writer.pid == os.getpid():
                    writer.close()  # the settings changed the layer (tests do)
                kind = _PubSubWriter if _PubSubWriter.supports(layer) else _LoopWriter
                writer = _writer = kind(layer)
    return writer


def _reset_after_fork() -> None:
    global _writer_lock
    # Another thread may have held the lock at the fork; the child has no such thread.
    _writer_lock = threading.Lock()
    _local.__init__()


def group_send_now(messages: list[GroupMessage], *, what: str) -> bool:
    """Send `messages` (in order) now, committed or not. False if it failed; a failure is
    logged, never raised: `what` names the recipients in the log line."""
    if not messages:
        return True
    layer = get_channel_layer()
    if layer is None:
        return True
    try:
        _writer_for(layer).send(messages)
    except Exception as exc:
        # Nothing retries it: persisted events stay in the event log, chat messages in
        # their room's history, and the sockets read them from there. Redis down: one log
        # line for the whole outage (taskhub/outages.py), not a traceback per push.
        if is_redis_outage(exc):
            REDIS.failed(exc, f"push to {what} failed; pushes are not retried")
        else:
            logger.warning("push to %s failed; not retried", what, exc_info=True)
        return False
    REDIS.recovered()
    return True


# --- After commit, batched ---------------------------------------------------------------


class _ThreadState(threading.local):
    def __init__(self) -> None:
        # Registered pushes whose callback has not run yet, in registration order (weak:
        # Django's on_commit list owns them, and a rollback drops them).
        self.pending: deque[weakref.ref[_Push]] = deque()
        # Committed messages not sent yet, and whom they are for (for the log).
        self.outbox: list[GroupMessage] = []
        self.recipients: list[str] = []


_local = _ThreadState()
os.register_at_fork(after_in_child=_reset_after_fork)


def _flush(state: _ThreadState) -> None:
    messages, state.outbox = state.outbox, []
    recipients, state.recipients = state.recipients, []
    if messages:
        group_send_now(messages, what=", ".join(dict.fromkeys(recipients)))


def _dropped(state: _ThreadState, ran: list[bool]) -> None:
    """A push was garbage-collected. If it never ran (rolled back, or the commit callbacks
    stopped at a non-robust one that raised), an earlier push may have left its message
    for this one to send: send it now rather than with the next push."""
    if ran[0] or not state.outbox:
        return
    try:
        _flush(state)
    except Exception:  # a weakref callback must not raise
        logger.exception("sending pushes left behind failed")


class _Push:
    __slots__ = ("__weakref__", "message", "ran", "recipient", "savepoints")

    def __init__(self, message: GroupMessage, recipient: str, savepoints: frozenset[str]) -> None:
        self.message = message
        self.recipient = recipient
        self.savepoints = savepoints
        self.ran = [False]  # shared with the weakref callback, which cannot see self

    def run(self) -> None:
        """The on_commit callback: queue the message, and send the queue unless a later
        push of the same commit is certain to run after this one and send it.

        Certain means registered later under no savepoint this one was not under: Django
        drops a callback only when a savepoint it was registered under rolls back, and
        this one's did not (it is running). A later push under a savepoint of its own may
        have been dropped, so then we send now: a batch only ever waits for a push that
        will come. Pushes of one thread run in registration order, so the queue keeps
        each user's order.
        """
        state = _local
        pending = state.pending
        while pending:  # forget what ran or was dropped
            first = pending[0]()
            if first is not None and (first is self or not first.ran[0]):
                break
            pending.popleft()
        self.ran[0] = True
        state.outbox.append(self.message)
        state.recipients.append(self.recipient)
        after_me = False
        for ref in pending:
            other = ref()
            if other is self:
                after_me = True
            elif (
                after_me
                and other is not None
                and not other.ran[0]
                and other.savepoints <= self.savepoints
            ):
                return  # that one sends the batch
        _flush(state)


def push_after_commit(
    *,
    group: str,
    message: dict[str, Any],
    recipient: str,
    connection: BaseDatabaseWrapper | None = None,
) -> None:
    """Send `message` to `group` once the current transaction commits (now if there is
    none); the pushes of one transaction go out together, in order. `recipient` names
    the group in a failure's log line. `connection`: the thread's default connection, if
    the caller has it at hand (looking it up costs a little, per event)."""
    if connection is None:
        connection = transaction.get_connection()
    push = _Push((group, message), recipient, frozenset(connection.savepoint_ids))
    state = _local
    ran = push.ran
    state.pending.append(weakref.ref(push, lambda _ref: _dropped(state, ran)))
    connection.on_commit(push.run, robust=True)
