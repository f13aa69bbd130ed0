"""Pushing frames to Channels groups from sync code: Celery workers, sync views, commands.

Why not `async_to_sync(layer.group_send)`: in a Celery worker there is no event loop to
hop back to, so every call started a thread and an event loop, and channels_redis (which
keeps its connection pools per loop) opened a new Redis connection for it and dropped it
again. Profiled (docs/benchmarks.md): 4.7-7.1 ms of CPU per pushed event, most of a
worker's CPU per task.

What happens instead, with channels_redis' RedisChannelLayer (the configured layer): this
process writes what the layer's `group_send` would write, with a plain redis-py client it
keeps for its lifetime, pipelined:

1. one round trip per Redis host reads the members of every group in the batch (after
   dropping members older than the layer's group_expiry, as group_send does);
2. one round trip per host stores every message, with a Lua script that does what
   group_send's does for each channel key: drop expired messages, skip a channel at
   capacity (counted and logged, like the layer), ZADD the message, renew the expiry.

The message stored for each channel key is built by the layer itself
(`_map_channel_keys_to_connection`: its serializer, random prefix, `__asgi_channel__` list
and per-channel capacity), so a consumer's `receive()` cannot tell these writes from the
layer's own. That is a private method of channels_redis 4.3 (pinned in requirements.txt):
an upgrade must re-read channels_redis/core.py `group_send`, and the tests in
notifications/tests/test_push_path.py go through real consumers to catch a mismatch. Any
other layer (the pub/sub one, the in-memory one) gets its own `group_send` run on an event
loop this process keeps, which also keeps that layer's connections.

Per process, fork-safe: the client or loop belongs to the pid that made it; a forked child
(Celery's prefork pool) makes its own on first use instead of writing on its parent's
sockets.

Batching: pushes registered with `push_after_commit` in one transaction are sent together
after it commits (a dispatcher run or a fan-out is two round trips, not two per event).
See `_Push.run` for how that stays correct with savepoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import weakref
from collections import defaultdict, deque
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("notifications.services")

# A (group, message) pair, the arguments of group_send.
GroupMessage = tuple[str, dict[str, Any]]

# KEYS: channel keys. ARGV: one message per key, then one capacity per key, then the score
# (the message's score), the key expiry and the cutoff below which a stored message has expired.
# Returns how many channels were at capacity (their message is not stored).
_STORE_SCRIPT = """
local n = #KEYS
local score = ARGV[2 * n + 1]
local expiry = ARGV[2 * n + 2]
local cutoff = ARGV[2 * n + 3]
local full = 0
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
  if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
    redis.call('ZADD', KEYS[i], score, ARGV[i])
    redis.call('EXPIRE', KEYS[i], expiry)
  else
    full = full + 1
  end
end
return full
"""
_STORE_SHA = hashlib.sha1(_STORE_SCRIPT.encode()).hexdigest()

# Apart enough to stay distinct at today's time.time() (a double's step there is ~2.4e-7).
_SCORE_STEP = 1e-6

# A publisher must not hang on a Redis that stopped answering (the layer's own setting is
# no timeout, which suits a socket that waits for messages, not one that writes them).
_SOCKET_TIMEOUT = 5.0


class _RedisWriter:
    """group_send for a RedisChannelLayer, as pipelined sync writes (see the module doc)."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        self.layer = layer
        self.pid = os.getpid()
        self.clients = [self._client(host) for host in layer.hosts]
        # A channel's messages are read lowest score first, so each message gets a score
        # above every earlier one of this process (time.time() alone repeats, and equal
        # scores would be read in the order of their random prefixes).
        self._last_score = 0.0
        self._score_lock = threading.Lock()

    @staticmethod
    def supports(layer: Any) -> bool:
        return type(layer) is RedisChannelLayer and all("address" in h for h in layer.hosts)

    @staticmethod
    def _client(host: dict[str, Any]) -> redis.Redis:
        options = {k: v for k, v in host.items() if k != "address"}
        if options.get("socket_timeout") is None:
            options["socket_timeout"] = _SOCKET_TIMEOUT
        options.setdefault("socket_connect_timeout", _SOCKET_TIMEOUT)
        # No retry: a push is sent at most once (a retried pipeline may write twice), and a
        # Redis that is down fails it at once instead of after redis-py's default backoff
        # of seconds, per event. The pool itself replaces a connection that a Redis
        # restart closed before handing it out, so the first push after one goes through.
        options["retry"] = Retry(NoBackoff(), 0)
        return redis.Redis.from_url(host["address"], **options)

    def _scores(self, count: int) -> list[float]:
        step = _SCORE_STEP
        with self._score_lock:
            first = max(time.time(), self._last_score + step)
            self._last_score = first + (count - 1) * step
        return [first + n * step for n in range(count)]

    def send(self, messages: list[GroupMessage]) -> None:
        layer = self.layer
        now = time.time()
        members = self._members({group for group, _ in messages}, now)
        calls: dict[int, list[tuple[str, list[bytes], list[Any]]]] = defaultdict(list)
        expiry, cutoff = int(layer.expiry), int(now) - int(layer.expiry)
        for (group, message), score in zip(messages, self._scores(len(messages)), strict=True):
            channels = members[group]
            if not channels:
                continue
            keys_by_host, key_message, key_capacity = layer._map_channel_keys_to_connection(
                channels, message
            )
            for index, keys in keys_by_host.items():
                args = [key_message[k] for k in keys] + [key_capacity[k] for k in keys]
                args += [score, expiry, cutoff]
                calls[index].append((group, keys, args))
        for index, host_calls in calls.items():
            self._store(self.clients[index], host_calls)

    def _members(self, groups: set[str], now: float) -> dict[str, list[str]]:
        layer = self.layer
        by_host: dict[int, list[str]] = defaultdict(list)
        for group in sorted(groups):
            by_host[layer.consistent_hash(group)].append(group)
        members: dict[str, list[str]] = {}
        for index, host_groups in by_host.items():
            pipe = self.clients[index].pipeline(transaction=False)
            for group in host_groups:
                key = layer._group_key(group)
                pipe.zremrangebyscore(key, min=0, max=int(now) - layer.group_expiry)
                pipe.zrange(key, 0, -1)
            replies = pipe.execute()
            for group, names in zip(host_groups, replies[1::2], strict=True):
                members[group] = [name.decode() for name in names]
        return members

    def _store(self, client: redis.Redis, calls: list[tuple[str, list[bytes], list[Any]]]) -> None:
        pending = calls
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            for _group, keys, args in pending:
                pipe.evalsha(_STORE_SHA, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            retry = []
            for call, reply in zip(pending, replies, strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    retry.append(call)  # Redis restarted or flushed its scripts
                elif isinstance(reply, Exception):
                    raise reply
                elif reply:
                    logger.info("%s channel(s) over capacity in group %s", reply, call[0])
            if not retry:
                return
            client.script_load(_STORE_SCRIPT)
            pending = retry
        raise redis.exceptions.NoScriptError("the push script could not be loaded")

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


_writer: _RedisWriter | _LoopWriter | None = None
_writer_lock = threading.Lock()


def _writer_for(layer: Any) -> _RedisWriter | _LoopWriter:
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
                kind = _RedisWriter if _RedisWriter.supports(layer) else _LoopWriter
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
    except Exception:
        logger.warning("push to %s failed; the event log keeps it", what, exc_info=True)
        return False
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


def push_after_commit(*, group: str, message: dict[str, Any], recipient: str) -> None:
    """Send `message` to `group` once the current transaction commits (now if there is
    none); the pushes of one transaction go out together, in order. `recipient` names
    the group in a failure's log line."""
    connection = transaction.get_connection()
    push = _Push((group, message), recipient, frozenset(connection.savepoint_ids))
    state = _local
    ran = push.ran
    state.pending.append(weakref.ref(push, lambda _ref: _dropped(state, ran)))
    transaction.on_commit(push.run, robust=True)
