"""Django's psycopg 3 connection pool (DATABASES OPTIONS["pool"]), safe across fork.

Why a pool and not persistent connections (DB_CONN_MAX_AGE): under ASGI, Django runs
each request's sync code in a thread of its own (asgiref's ThreadSensitiveContext), and
Django's connections are per thread, so a persistent connection dies with its request's
thread and the next request opens a new one anyway. The pool is per process and shared by
every thread: a request's "close" puts the connection back.

Why the fork hook: Celery's prefork pool forks its children from a parent that has used
the database (tasks.worker_signals closes out a previous run at worker_ready), and a
replacement child is forked later still. A child that inherited the parent's pool would
hand out the parent's sockets (two processes talking over one PostgreSQL session) from a
pool whose maintenance threads did not survive the fork. So the child forgets the
inherited pool and any connection it had checked out, without closing them: a close would
end the parent's sessions too (psycopg itself never closes an inherited connection on
garbage collection, for the same reason). The child then opens a pool of its own on first
use.

Why `keep_reconnecting_while_requests_wait`, `check_connection_then_the_idle_ones` and
`cap_pool_size`: see their docstrings.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)

_registered = False


def forget_inherited_pools() -> None:
    """In a freshly forked child: drop the parent's pools and connections, unclosed."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    global _checking_idle
    _checking_idle = threading.Lock()  # a sweep running at the fork does not run here
    for wrapper in connections.all(initialized_only=True):
        # The forking thread's wrapper survives the fork with the parent's connection.
        wrapper.connection = None
    DatabaseWrapper._connection_pools.clear()


def keep_reconnecting_while_requests_wait(pool: Any) -> None:
    """psycopg_pool's `reconnect_failed` hook: a reconnection attempt gave up
    (`reconnect_timeout`) while PostgreSQL was down. The pool starts another only when
    someone next asks for a connection, and in a process whose every thread is already
    waiting for one (the gRPC server's, during an outage), nobody does: nothing connected
    until the waits ran out (DB_POOL_TIMEOUT), seconds after PostgreSQL was back (issue 13,
    R2). While requests wait, start another attempt at once (check() grows an empty pool);
    its backoff begins again at 1 s, so a return is noticed within about 2 s. With nobody
    waiting the pool rests, as before, until the next request."""
    if pool.get_stats().get("requests_waiting", 0):
        pool.check()


_checking_idle = threading.Lock()


def check_connection_then_the_idle_ones(pool: Any, connection: Any) -> None:
    """The pool's check of a connection it is about to hand out (CONN_HEALTH_CHECKS), which
    on a dead one also has the pool test all its idle connections, in a thread.

    A PostgreSQL restart closes every session, and the pool finds each dead connection only
    at its check; between two failed checks in one request it sleeps, backing off 1, 2, 4 s
    (psycopg_pool's guard against a busy loop, psycopg#709). After a restart a request met
    the idle connections one by one: 3 s with three of them, and with six a 503 after
    DB_POOL_TIMEOUT, although PostgreSQL was back and fresh connections were being added
    behind the dead ones (issue 13, R2). One dead connection says the others are likely
    dead too: pool.check() (what psycopg's maintainer advises when "you know when the
    event happens") takes them all out at once and replaces them, and the request gets a
    fresh one at its next try (after one step of the backoff, about 1 s) instead of
    waiting out the rest.

    pool.check() also grows the pool by one connection each time it runs (it lets an
    emptied pool grow), and a pool shrinks back by one connection per 10 idle minutes:
    after a few restarts a web or gRPC process holds up to DB_POOL_MAX for hours, which is
    why the sum of the maxima must fit (cap_pool_size, docs/scaling.md)."""
    try:
        ConnectionPool.check_connection(connection)
    except Exception:
        if _checking_idle.acquire(blocking=False):  # one sweep at a time is enough
            try:
                threading.Thread(target=_check_idle, args=(pool,), daemon=True).start()
            except BaseException:  # no thread (interpreter shutdown): a later check retries
                _checking_idle.release()
        raise


def _check_idle(pool: Any) -> None:
    lost = pool.get_stats().get("connections_lost", 0)
    try:
        pool.check()
    except Exception as exc:  # a pool being closed (a process exiting)
        logger.debug("checking the idle pooled connections failed: %s", exc)
    else:
        # psycopg_pool's own WARNING per dead connection is dropped (taskhub/log_filters.py,
        # DatabaseOutageOneLine): the restart is the process's one outage line.
        lost = pool.get_stats().get("connections_lost", 0) - lost
        logger.debug("replaced %s dead idle pooled connection(s)", lost)
    finally:
        _checking_idle.release()


def cap_pool_size(max_size: int) -> None:
    """This process never needs more than `max_size` connections at once: cap its pool,
    and keep one open at rest instead of DB_POOL_MIN.

    DB_POOL_MAX (32) is sized for the busiest processes, Daphne and the gRPC server, which
    serve many requests at once. A Celery pool process runs one task at a time, and the
    worker's main process and beat write now and then; left at 32 each, a stack of a few
    workers could open more than PostgreSQL's max_connections (100 by default). A pool
    grows past its minimum when a waiting request, or the check after a restart
    (check_connection_then_the_idle_ones), finds it short, and gives one connection back
    per 10 idle minutes: R2's stack of eight processes at 32 each hit "too many clients"
    after about ten PostgreSQL restarts (issue 13). Capped, the sum of the maxima is what
    the stack can ever open (docs/scaling.md, "How many PostgreSQL connections").

    Called at worker_init and beat_init, before any pool exists (the worker's pool
    processes are forked after it and inherit the cap), so it only sets the options the
    pool will be made with."""
    from django.conf import settings

    options = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if not isinstance(options, dict):  # no pool (DB_POOL_MAX=0), or Django's defaults
        return
    options["max_size"] = min(options.get("max_size", max_size), max_size)
    options["min_size"] = min(options.get("min_size", 0), 1)


def register_fork_hook() -> None:
    """Install forget_inherited_pools for every os.fork() of this process (once)."""
    global _registered
    if not _registered:
        os.register_at_fork(after_in_child=forget_inherited_pools)
        _registered = True
