"""One PostgreSQL pool per process (taskhub/db_pool.py): reused by every request's thread,
never shared with a forked child (Celery's prefork workers)."""

from __future__ import annotations

import os
import threading

import pytest
from django.conf import settings
from django.db import connection

from taskhub.tests.test_settings import run_manage

needs_pool = pytest.mark.skipif(
    not settings.DATABASES["default"].get("OPTIONS", {}).get("pool"),
    reason="the pool is turned off in this environment (DB_POOL_MAX=0)",
)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def in_a_new_thread(function):
    """What Daphne does with a request: run it on a thread of its own, then close."""
    result = []

    def run() -> None:
        try:
            result.append(function())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


@needs_pool
@pytest.mark.django_db(transaction=True)
def test_requests_on_new_threads_reuse_the_pools_sessions():
    in_a_new_thread(backend_pid)
    opened_before = connection.pool.get_stats()["connections_num"]

    sessions = {in_a_new_thread(backend_pid) for _ in range(10)}

    # Without the pool every thread would open (and close) a session of its own.
    assert connection.pool.get_stats()["connections_num"] == opened_before
    assert len(sessions) <= connection.pool.get_stats()["pool_size"]


@needs_pool
@pytest.mark.django_db(transaction=True)
def test_a_forked_child_opens_its_own_session_and_leaves_the_parents_alone():
    parent_pid = backend_pid()  # the parent's pool is open, a connection checked out
    read, write = os.pipe()

    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.write(write, str(backend_pid()).encode())
            connection.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_pid = int(pipe.read() or 0)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert child_pid not in (0, parent_pid)
    # The child neither used nor closed the parent's session: it still answers.
    assert backend_pid() == parent_pid


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DB_POOL_MAX": "many"}, "DB_POOL_MAX must be an integer"),
        ({"DB_CONN_MAX_AGE": "60", "DB_POOL_MAX": "8"}, "DB_CONN_MAX_AGE must be 0"),
        ({"DB_POOL_MAX": "8", "DB_POOL_TIMEOUT": "0"}, "DB_POOL_TIMEOUT must be >= 0.1"),
    ],
)
def test_a_bad_pool_setting_stops_start_up_naming_the_variable(env, message):
    result = run_manage("check", DEBUG="1", **env)

    assert result.returncode != 0
    assert message in result.stderr
