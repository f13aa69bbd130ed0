"""Logging filters referenced from settings.LOGGING."""

from __future__ import annotations

import logging


class DropRoutineTicks(logging.Filter):
    """Drop the per-second lines of the dispatcher's beat tick and the worker's receipt of
    it: at one a second they would drown the task lines ("task <id> status a -> b") and
    every other beat message, which stay."""

    ROUTINE = ("dispatch-pending-tasks", "tasks.dispatch_pending_tasks")

    def filter(self, record: logging.LogRecord) -> bool:
        # Only the routine lines: a tick that failed ("raised unexpected") must be seen.
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        return not any(name in message for name in self.ROUTINE)


class RedisOutageOneLine(logging.Filter):
    """A library's own traceback for a Redis (or broker) that is away becomes the process's
    one outage line (taskhub/outages.py), with `consequence` saying what degrades.

    Two libraries log such a failure themselves, with a traceback each time: channels_redis'
    receive loop once a second while Redis is down (a web process), and celery beat for
    every tick it could not send (issue 13, R3: 34 tracebacks for two 3-second outages).
    Any other error keeps its record and traceback."""

    def __init__(self, consequence: str) -> None:
        super().__init__()
        self.consequence = consequence

    def filter(self, record: logging.LogRecord) -> bool:
        from taskhub import outages  # imports django.db: not while logging is configured

        exc = record.exc_info[1] if record.exc_info else None
        # beat raises its SchedulingError while handling kombu's OperationalError.
        for error in (exc, getattr(exc, "__cause__", None), getattr(exc, "__context__", None)):
            if error is not None and outages.is_redis_outage(error):
                outages.REDIS.failed(error, self.consequence)
                return False
        return True


class RedisOutageWithoutTraceback(logging.Filter):
    """Keep a library's line about one operation that met a Redis outage, without its
    traceback: Celery's "Couldn't ack '<id>', reason: network:ConnectionError" (a run
    message whose ack met the broker's loss; it is delivered again and its task's row says
    it already ran) names the message, which the outage line does not (issue 13, R3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from taskhub import outages  # imports django.db: not while logging is configured

        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and outages.is_redis_outage(exc):
            record.exc_info = record.exc_text = None
        return True


class DatabaseOutageOneLine(logging.Filter):
    """psycopg_pool's line for each connection attempt that failed becomes the process's
    one outage line (taskhub/outages.py): while PostgreSQL restarts, a pool retries every
    connection it should hold, with a backoff of its own, and logged each attempt ("error
    connecting in 'pool-1': ..."): about 60 lines per restart in a web process (issue 13,
    R2), for an outage the requests that waited for a connection often never saw. Its
    "reconnection attempt ... failed after N sec" is dropped during an outage too, and its
    "discarding broken connection" for each dead idle connection found after a restart. A
    failure that is not an outage (a refused password, say) keeps its line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from taskhub import outages  # imports django.db: not while logging is configured

        if record.msg == "error connecting in %r: %s" and isinstance(record.args, tuple):
            error = record.args[-1]
            if isinstance(error, BaseException) and outages.is_database_outage(error):
                outages.DATABASE.failed(
                    error,
                    "the connection pool retries in the background; requests wait for a "
                    "connection (DB_POOL_TIMEOUT), then answer 503 with Retry-After",
                )
                return False
        if str(record.msg).startswith("reconnection attempt in pool"):
            return not outages.DATABASE.down
        # One per dead idle connection when the pool checks them after a restart
        # (taskhub/db_pool.py): up to DB_POOL_MAX lines for one restart, which the process
        # has reported once already, or which no request even met.
        return record.msg != "discarding broken connection: %s"
