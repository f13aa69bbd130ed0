"""A task's row lock held by a connection of its own, as a concurrent request or worker
would hold it, so a test can stage what happens to the code that waits for it: real
PostgreSQL errors (a cancelled statement) and real races (a cancel request that lands
between a check and a write), with no mock of the database.

    with RowLock(task.pk) as lock:
        lock.when_waited_for(lock.cancel_the_waiter)   # or lock.write("UPDATE ...")
        code_that_locks_the_row()

The lock is taken in the constructor; `when_waited_for` starts a thread that waits until
another session is blocked on it (pg_blocking_pids, so no timing), does its part and
commits, which lets the waiter go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
from django.db import connection

from devserver.testing import wait_until


def _conninfo() -> str:
    """The test database (test_<name>), as Django's own connection reaches it."""
    db = connection.settings_dict
    params: dict[str, Any] = {"dbname": db["NAME"], "user": db["USER"]}
    for key, name in (("host", "HOST"), ("port", "PORT"), ("password", "PASSWORD")):
        if db.get(name):
            params[key] = str(db[name])
    return psycopg.conninfo.make_conninfo(**params)


class RowLock:
    def __init__(self, task_id: UUID | str) -> None:
        self.task_id = str(task_id)
        self._holder = psycopg.connect(_conninfo())
        self._holder.execute("SELECT 1 FROM tasks_task WHERE id = %s FOR UPDATE", [self.task_id])
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _waiter(self) -> int:
        """The pid of a session blocked on this lock (autocommit: pg_stat_activity is read
        afresh on each look, not from one transaction's snapshot)."""
        blocked = "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        with psycopg.connect(_conninfo(), autocommit=True) as watcher:
            return wait_until(
                lambda: watcher.execute(blocked, [self._holder.info.backend_pid]).fetchone(),
                timeout=60,
                message="a session to wait for the row lock",
            )[0]

    def cancel_the_waiter(self, pid: int) -> None:
        """pg_cancel_backend: the waiter's statement fails with QueryCanceled (57014),
        "canceling statement due to user request", while PostgreSQL stays up."""
        with psycopg.connect(_conninfo(), autocommit=True) as canceller:
            canceller.execute("SELECT pg_cancel_backend(%s)", [pid])

    def write(self, sql: str, params: list[Any] | None = None) -> Callable[[int], None]:
        """A change made under the lock, seen by the waiter once it has the row."""
        return lambda pid: self._holder.execute(sql, params)

    def when_waited_for(self, then: Callable[[int], None]) -> None:
        def run() -> None:
            try:
                then(self._waiter())
            except BaseException as exc:  # the test reports it; the lock is let go anyway
                self.error = exc
            finally:
                self._holder.commit()

        self._thread = threading.Thread(target=run, name="row-lock", daemon=True)
        self._thread.start()

    def __enter__(self) -> RowLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._thread.join(timeout=90)
        else:
            self._holder.commit()
        self._holder.close()
        if self.error is not None and exc_info[0] is None:
            raise self.error
