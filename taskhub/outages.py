"""One log line per outage of a backing service, not a traceback per request.

While Redis or PostgreSQL is down every request that touches it fails the same way; a
traceback for each (the issue 13 baseline: 1,475 for three 3-second Redis outages, 698 for
four PostgreSQL stops) buries the one fact an operator needs. So the code that degrades
(tasks/cache.py, taskhub/throttling.py, tasks/nudge.py, tasks/queue.py) or answers 503
(taskhub/api_errors.py, tasks/grpc/errors.py) reports the failure here: the first one of
an outage is logged as one WARNING line naming the error and what degrades; the rest are
only counted until the service answers again, which is logged as one line too, with the
count. Per process: each process finds out on its own (docs/running.md, "When Redis or
PostgreSQL is down").

Recovery is noticed where it costs nothing: the Redis paths call `recovered()` after a
command that worked (an attribute check when nothing is down), and a new PostgreSQL
connection (Django's connection_created signal, sent for each connection a request takes
from the pool too) ends a database outage.
"""

from __future__ import annotations

import logging
import threading
import time

import kombu.exceptions
import psycopg
import redis
from django.db import InterfaceError, OperationalError
from django.db.backends.signals import connection_created
from django_redis.exceptions import ConnectionInterrupted

logger = logging.getLogger("taskhub.outages")


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for one log line."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0][:200]}" if message else type(exc).__name__


# A failure this soon after the service answered again belongs to the outage that just
# ended, not to a new one: a connection the stop closed is found out only when it is next
# used, by a thread that had it checked out meanwhile. Issue 13's R2 saw it 0.1-0.4 s
# after "available again", three times in 20 restarts in the web process and the gRPC
# server ("terminating connection due to administrator command", "server closed the
# connection unexpectedly"), each logged as an outage of 0.0 s. A service that really
# goes down again this soon is logged at its next failure after the window.
SETTLE_SECONDS = 1.0


class Outage:
    """The state of one backing service as this process has seen it."""

    def __init__(self, service: str, *, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.service = service
        self.settle_seconds = settle_seconds
        self._lock = threading.Lock()
        self._since: float | None = None
        self._recovered_at: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, consequence: str) -> None:
        """A command failed because the service is unreachable; `consequence` says what
        this process does instead ("cached reads go to the database")."""
        with self._lock:
            if self._since is not None:
                self._failures += 1
                return
            now = time.monotonic()
            if self._recovered_at is not None and now - self._recovered_at < self.settle_seconds:
                late = now - self._recovered_at
                opened = False
            else:
                self._since, self._failures, opened = now, 1, True
        if not opened:
            logger.debug(
                "%s: a failure %.2f s after it answered again, taken as the tail of the "
                "outage that ended, not a new one (%s)",
                self.service,
                late,
                describe(exc),
            )
            return
        logger.warning(
            "%s unavailable (%s): %s; further failures are counted, not logged, until it "
            "answers again",
            self.service,
            describe(exc),
            consequence,
        )

    def forget(self) -> None:
        """Start afresh without a log line (tests: one test's dead server must not keep
        the next test's first failure from being logged)."""
        with self._lock:
            self._since, self._failures, self._recovered_at = None, 0, None

    def recovered(self) -> None:
        """A command to the service worked: end the outage if one was open."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._since is None:
                return
            now = time.monotonic()
            seconds, failures = now - self._since, self._failures
            self._since, self._failures, self._recovered_at = None, 0, now
        logger.warning(
            "%s available again after %.1f s; %d operation(s) failed meanwhile",
            self.service,
            seconds,
            failures,
        )


# What a Redis (or broker) that is down, restarting or unreachable raises, through redis-py,
# django-redis and kombu; BusyLoadingError (a restarting Redis) is a ConnectionError. Not
# redis.ResponseError and the like: a refused command is a bug to see with its traceback.
_REDIS_OUTAGE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,  # a replica promoted under us: writes fail until failover ends
    ConnectionInterrupted,
    kombu.exceptions.OperationalError,
    ConnectionError,  # the OSErrors a socket raises: refused, reset, broken pipe
    # Not the builtin TimeoutError: since Python 3.11 it is asyncio.TimeoutError too, so any
    # asyncio timeout (a wait_for of ours) would be logged as "Redis unavailable". redis-py
    # and kombu turn a socket's timeout into redis.TimeoutError and OperationalError above.
)


def is_redis_outage(exc: BaseException) -> bool:
    return isinstance(exc, _REDIS_OUTAGE)


# SQLSTATEs of a lost or unreachable server: class 08 (connection exception), admin/crash
# shutdown and "the database system is starting up / shutting down" (57P01-57P03), too many
# connections (53300). Not the rest of class 53 (disk full, out of memory) nor 54 (a
# statement too big), 55P03 (lock not available) or 57014 (a cancelled statement): those
# are this request's or the server's own trouble, and a retry in 5 s meets them again.
_SERVER_GONE = ("08", "57P01", "57P02", "57P03", "53300")
# The transaction lost a race (serialization failure, deadlock): PostgreSQL rolled it back
# and a retry of the same request is the documented remedy, so the client is told to retry
# (503 with Retry-After), but PostgreSQL is up: no outage.
_LOST_A_RACE = ("40001", "40P01")


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the psycopg error Django's wrapper raised `exc` from (None when the
    server never answered: a refused connect, a pool timeout, a dropped connection)."""
    return getattr(exc.__cause__, "sqlstate", None)


# A connection attempt's error carries no SQLSTATE (libpq keeps the server's to itself),
# only its text. These words mean PostgreSQL is up and turned this client away: a wrong or
# missing password, no such role or database, no pg_hba.conf entry, a role that may not
# log in. That is a configuration to fix, not an outage to wait out. Everything else
# without a SQLSTATE (refused, reset, timed out, starting up, shutting down, "terminating
# connection" during a fast shutdown, too many clients) is an outage. A server that
# translates its messages (lc_messages) says these in its own language: its refusals
# then count as outages, as all of them did before.
_REFUSED_AT_CONNECT = (
    "password authentication failed",
    "no password supplied",
    "does not exist",  # role "x" / database "x" does not exist
    "no pg_hba.conf entry",
    "is not permitted to log in",
    "permission denied for database",
)


def _refused_at_connect(exc: BaseException) -> bool:
    text = str(exc)
    return any(words in text for words in _REFUSED_AT_CONNECT)


def is_database_outage(exc: BaseException) -> bool:
    """PostgreSQL itself is down or unreachable: a connection could not be made, was lost
    or closed under the caller (InterfaceError), or the server is shutting down, starting up
    or full of connections. Not a deadlock, a cancelled statement or a full disk, and not a
    connection the server refused (a wrong password: the error keeps its traceback).

    Django's errors, and psycopg's own from code Django does not wrap (psycopg_pool's
    connection attempts)."""
    if isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, OperationalError):
        sqlstate = _sqlstate(exc)
    elif isinstance(exc, psycopg.OperationalError):
        sqlstate = exc.sqlstate
    else:
        return False
    if sqlstate is None:
        return not _refused_at_connect(exc)
    return sqlstate.startswith(_SERVER_GONE)


def is_database_lost_race(exc: BaseException) -> bool:
    """A serialization failure or deadlock: rolled back, worth the same request again."""
    return isinstance(exc, OperationalError) and _sqlstate(exc) in _LOST_A_RACE


def is_database_retry_later(exc: BaseException) -> bool:
    """An error a client should retry (503 with Retry-After, gRPC UNAVAILABLE) rather than
    a bug (500 with its traceback): an outage, or a transaction that lost a race."""
    return is_database_outage(exc) or is_database_lost_race(exc)


REDIS = Outage("Redis")
DATABASE = Outage("PostgreSQL")


def skip_while_database_is_away(exc: Exception, consequence: str) -> None:
    """For a Celery task that a later run repeats (a beat tick, a sweep, a delivery the
    sweep re-sends): when it met a PostgreSQL outage, the rows are still the state and the
    next run does the work, so the outage is this process's one line (`consequence`: what
    waits) instead of a traceback each run. Anything else is raised again."""
    if not is_database_outage(exc):
        raise exc
    DATABASE.failed(exc, consequence)


def _database_connected(sender: object, **kwargs: object) -> None:
    DATABASE.recovered()


connection_created.connect(_database_connected, dispatch_uid="taskhub.outages")
