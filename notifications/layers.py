"""The channel layer: channels_redis' pub/sub layer, plus the `on_reconnect` its README
documents.

Why pub/sub: channels_redis' RedisChannelLayer takes one message per Redis round trip
per channel and serialises every waiting socket behind one lock; at 5,000 sockets its
delivery p50 was 7.7 s against 15-16 ms for RedisPubSubChannelLayer (docs/benchmarks.md).

Its trade-off: Redis pub/sub keeps nothing. While the layer's subscriber connection is
down (Redis restarted, a network blip) every message published is lost for this
process, and nothing says so: redis-py reconnects and re-subscribes on its own. The
layer's README offers `on_disconnect`/`on_reconnect` for exactly this, but channels_redis
4.3 accepts them and never calls them (channels_redis#406, since its move to redis-py's
PubSub). This subclass makes `on_reconnect` work as documented: once a shard's
subscriber connection is back and has re-subscribed, every channel of this process (every
consumer) receives a message of that type. notifications.consumers turns it into one
resync for the whole process (docs/protocol.md, "After the server lost Redis").

It also adds `delete_channel`, which channels_redis leaves to receive(), and a
`new_channel` that leaves nothing behind when its SUBSCRIBE fails and gives the channel a
LeanQueue, not an asyncio.Queue (taskhub/lean_queue.py: about 3 KiB less per socket).

The subclass touches these names of channels_redis 4.3 (pinned in requirements.txt): the
loop layer's `_shards`, `channels`, `prefix` and `_get_shard`, and a shard's
`_ensure_redis`/`_redis`/`_pubsub`/`subscribe`/`unsubscribe`. An upgrade must
re-read channels_redis/pubsub.py; notifications/tests/test_reconnect.py restarts a real
Redis under live sockets to catch a mismatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskhub import outages
from taskhub.lean_queue import LeanQueue

logger = logging.getLogger(__name__)


class _WatchedPubSub(PubSub):
    """redis-py's PubSub, telling `reconnected` after it re-subscribed on a new connection
    (redis-py calls on_connect on a reconnect only, never on the first connect), and
    letting one coroutine at a time read from its connection."""

    def __init__(self, *args: Any, reconnected: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reconnected = reconnected
        # Two coroutines read from the one subscriber connection: the shard's receive loop
        # (get_message, without the shard's lock) and whoever reconnects it, whose
        # handshake reads its replies. redis-py calls a connection connected once its socket
        # is open, before the handshake's reply is read, so the receive loop started
        # reading too: it took the handshake's reply for a message, or the handshake's read
        # failed ("readuntil() called while another coroutine is already waiting"), and
        # the socket whose SUBSCRIBE reconnected got 4503 just after Redis came back. The
        # lock makes them take turns. SUBSCRIBE on a connected connection only writes: it
        # does not wait for the receive loop, so connects stay as fast as before.
        self._reading = asyncio.Lock()
        self._reading_task: asyncio.Task | None = None
        self._handshaking = False
        self._reconnects = 0

    @contextlib.asynccontextmanager
    async def _reading_alone(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if self._reading_task is task:
            # Re-entered: the receive loop's read met a dead connection and reconnects it
            # (redis-py's retry), and the reconnect re-subscribes (on_connect).
            yield
            return
        async with self._reading:
            self._reading_task = task
            try:
                yield
            finally:
                self._reading_task = None

    @contextlib.asynccontextmanager
    async def _handshake(self) -> AsyncIterator[None]:
        async with self._reading_alone():
            under_way, self._handshaking = self._handshaking, True
            try:
                yield
            finally:
                self._handshaking = under_way  # a re-entered one leaves the outer's flag

    async def connect(self) -> None:
        connection = self.connection
        if connection is not None and (not connection.is_connected or self._handshaking):
            # Reconnecting, or another coroutine's handshake is under way: a SUBSCRIBE
            # written before its HELLO would be read as HELLO's reply.
            async with self._handshake():
                await super().connect()
        else:
            await super().connect()
        # A SUBSCRIBE (a new socket's channel or group) on a connection the server already
        # closed, before the receive loop noticed (just after a Redis restart), is sent
        # once more on a new connection instead of failing the connect with 4503 (issue
        # 13, R3). The reconnect re-subscribes every channel first (on_connect below), and
        # subscribing twice is harmless. The pool's own connections (PUBLISH) keep none.
        # AttributeError too: a SUBSCRIBE whose connection the receive loop tore down
        # mid-send finds its writer gone, None, and the connect ended with a 500 handshake
        # (3 in 133 connects during R3's outages).
        if self.connection.retry.get_retries() < 1:
            errors = (redis.ConnectionError, redis.TimeoutError, AttributeError)
            self.connection.retry = Retry(NoBackoff(), 1, supported_errors=errors)

    async def parse_response(self, block: bool = True, timeout: float = 0) -> Any:
        async with self._reading_alone():
            connection = self.connection
            if connection is not None and not connection.is_connected:
                async with self._handshake():
                    await connection.connect()
            return await super().parse_response(block, timeout)

    async def _reconnect(self, conn: Any, *args: Any, **kwargs: Any) -> None:
        # redis-py's retry after a failed SUBSCRIBE or read: disconnect, connect again.
        reconnects = self._reconnects
        async with self._handshake():
            if self._reconnects != reconnects and conn.is_connected:
                return  # the receive loop reconnected while this waited: use that one
            await super()._reconnect(conn, *args, **kwargs)

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)  # SUBSCRIBE for every channel is sent now
        self._reconnects += 1
        # The outage line taskhub/log_filters.py logged for the receive loop ends here.
        outages.REDIS.recovered()
        self._reconnected()


class _Shard(RedisSingleShardConnection):
    def __init__(self, host: dict[str, Any], loop_layer: RedisPubSubLoopLayer, message: bytes):
        super().__init__(host, loop_layer)
        self._reconnect_message = message

    def _ensure_redis(self) -> None:
        if self._redis is None:
            super()._ensure_redis()
            self._pubsub = _WatchedPubSub(self._redis.connection_pool, reconnected=self._tell)

    def _tell(self) -> None:
        channels = self.channel_layer.channels
        logger.warning(
            "channel layer reconnected to Redis; telling %d channel(s) to resync", len(channels)
        )
        for queue in channels.values():
            queue.put_nowait(self._reconnect_message)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """RedisPubSubChannelLayer whose `on_reconnect` (a message type) is delivered to every
    channel of the process after its subscriber connection to a shard came back."""

    def __init__(self, *args: Any, on_reconnect: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_reconnect = on_reconnect

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = super()._get_layer()  # made and registered for this loop, unconnected
            if self.on_reconnect:
                message = self.serialize({"type": self.on_reconnect})
                layer._shards = [_Shard(shard.host, layer, message) for shard in layer._shards]
        return layer

    async def new_channel(self, prefix: str = "specific.") -> str:
        """channels_redis' new_channel, less its leftover when the SUBSCRIBE fails: it
        registers the channel's queue before subscribing, and a subscribe that raised
        (Redis down: the connect is closed with 4503) left the queue in this process for
        good, to be sent every later on_reconnect message. The queue is a LeanQueue: every
        socket holds one for its life, nearly always empty."""
        layer = self._get_layer()
        channel = f"{layer.prefix}{prefix}{uuid.uuid4().hex}"
        layer.channels[channel] = LeanQueue()
        try:
            await layer._get_shard(channel).subscribe(channel)
        except BaseException:
            layer.channels.pop(channel, None)
            raise
        return channel

    async def delete_channel(self, channel: str) -> None:
        """Forget a channel of new_channel(): its queue and its Redis subscription.

        channels_redis does this only inside receive(), when a receive waiting on the
        channel is cancelled (its comment names this method as the one that should).
        A consumer whose reader ended elsewhere (a handler that raised, a push still in
        hand when the socket ended) left the queue in this process and the channel
        subscribed in Redis for the life of the process. Nothing to do, no round trip,
        when receive() already did it, as on every ordinary close.

        The unsubscribe runs in a task of its own, so that a caller who stops waiting
        (a time limit, Daphne cancelling the application) does not cut it off halfway:
        the queue is already gone by then, and nothing else would ever retry it. Its
        failure is logged there (Redis away: the process's one outage line), not raised."""
        layer = self._get_layer()
        if layer.channels.pop(channel, None) is None:
            return
        # Bounded too: the shard's lock is held meanwhile, and its publishes, subscribes
        # and group_adds wait behind a stuck unsubscribe.
        unsubscribe = asyncio.ensure_future(
            asyncio.wait_for(layer._get_shard(channel).unsubscribe(channel), UNSUBSCRIBE_LIMIT)
        )
        _unsubscribing.add(unsubscribe)
        unsubscribe.add_done_callback(_unsubscribe_done)
        await asyncio.wait({unsubscribe})  # a cancel of the caller leaves it running


# How long delete_channel's unsubscribe may take before it is given up (the channel then
# stays subscribed, as it did before delete_channel existed).
UNSUBSCRIBE_LIMIT = 15.0

# Unsubscribes under way (delete_channel), held here so that none is garbage-collected
# before it is done.
_unsubscribing: set[asyncio.Future[Any]] = set()


def _unsubscribe_done(task: asyncio.Future[Any]) -> None:
    _unsubscribing.discard(task)
    if task.cancelled():  # the loop is being shut down
        return
    exc = task.exception()
    if exc is None:
        return
    if outages.is_redis_outage(exc) or isinstance(exc, TimeoutError):
        outages.REDIS.failed(exc, "channels of ended sockets stay subscribed")
    else:
        logger.warning("unsubscribing an ended socket's channel failed", exc_info=exc)
