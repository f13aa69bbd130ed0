"""Coalesced dispatcher nudges: a burst of creates sends one dispatch, not one each.

A create nudges the dispatcher after commit so an idle system starts the task at once.
One message per create would keep worker slots busy with dispatcher runs that find
nothing (measured: under a burst, most of them did). So a nudge first sets a flag in
Redis and sends a dispatch only if the flag was not already set; the dispatcher clears
the flag *before* it looks for pending rows.

Why no task is left waiting: a nudge runs after its create committed. If it found the
flag set, the dispatch that set it has not yet cleared it, so that dispatch's query runs
after the clear, which is after this commit: it sees the new row. If the nudge found the
flag clear, it sends a dispatch of its own. The flag expires after FLAG_TTL seconds in
case a dispatch message is lost; beat's tick covers that gap anyway.

With Redis down (it is the broker too) a nudge sends nothing and the create still
succeeds: its row waits `pending` for the dispatcher's first tick after Redis is back,
the same tick that would have come anyway (docs/running.md, "When Redis or PostgreSQL is
down"). Trying the broker would only make every create wait for kombu's retries to fail.
"""

from __future__ import annotations

import logging
from functools import cache

import redis
from django.conf import settings

from taskhub.outages import REDIS, is_redis_outage
from tasks import queue

logger = logging.getLogger("tasks")

FLAG = "taskhub:dispatcher:nudged"
FLAG_TTL = 5


@cache
def _client() -> redis.Redis:
    # redis-py's pool notices a fork and reconnects, so one client per process is safe
    # under Celery's prefork pool.
    return redis.Redis.from_url(
        settings.TASKHUB_REDIS_URL, socket_timeout=2, socket_connect_timeout=2
    )


def nudge_dispatcher() -> None:
    """Ask for a dispatch now instead of at the next beat tick. Call after commit only."""
    try:
        first = bool(_client().set(FLAG, 1, nx=True, ex=FLAG_TTL))
    except redis.RedisError as exc:
        if is_redis_outage(exc):
            REDIS.failed(exc, "the dispatcher is not nudged; new tasks wait for its next tick")
            return
        first = True  # cannot coalesce; an extra dispatch is always safe
    else:
        REDIS.recovered()
    if first:
        queue.send_dispatch(expires=settings.TASKHUB_QUEUED_RESEND_AFTER)


def clear_nudges() -> None:
    """Called by the dispatcher before it looks for pending rows (see the module doc)."""
    try:
        _client().delete(FLAG)
    except redis.RedisError as exc:
        if is_redis_outage(exc):
            REDIS.failed(exc, "the dispatcher nudge flag is not cleared")
        else:
            logger.warning("could not clear the dispatcher nudge flag", exc_info=True)
