"""Redis clients for the WebSocket bookkeeping (connection registry), not for events.

An asyncio Redis client belongs to the event loop it first ran on, so the async one is
kept per loop (Daphne has one loop per process; tests have one per test). The sync one
(for /metrics and management code) is one thread-safe pool per process.
"""

from __future__ import annotations

import asyncio
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)
_sync_client: redis.Redis | None = None


def async_redis() -> aioredis.Redis:
    """The client of the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # A blocking pool: a burst of connects waits for a free connection (up to
        # `timeout`) instead of failing with MaxConnectionsError as the default pool does.
        # One retry at once on a connection error: a pooled connection that a restarted
        # Redis (or CLIENT KILL, or its `timeout`) closed fails its first command, and the
        # next connect was refused with 4503 though Redis was up (issue 13, R3). Every
        # command here is a registry write that may run twice (a set member added or
        # removed again, an expiry renewed).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.TASKHUB_REDIS_URL,
            max_connections=100,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 1),
        )
        client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


async def close_async_redis() -> None:
    """Close the running loop's client: tests call this (and selectors.close_async_pool,
    for the sockets' PostgreSQL pool) before their loop goes away."""
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose(close_connection_pool=True)


def sync_redis() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(
            settings.TASKHUB_REDIS_URL, socket_timeout=5, socket_connect_timeout=5
        )
    return _sync_client
