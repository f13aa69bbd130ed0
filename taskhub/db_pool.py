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

Why `keep_reconnecting_while_requests_wait`: see its docstring.
"""

from __future__ import annotations

import os
from typing import Any

_registered = False


def forget_inherited_pools() -> None:
    """In a freshly forked child: drop the parent's pools and connections, unclosed."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

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


def register_fork_hook() -> None:
    """Install forget_inherited_pools for every os.fork() of this process (once)."""
    global _registered
    if not _registered:
        os.register_at_fork(after_in_child=forget_inherited_pools)
        _registered = True
