"""Every PostgreSQL connection asks the kernel to notice a database host that went silent
(settings: DB_CONNECT_TIMEOUT, DB_KEEPALIVE_IDLE, DB_TCP_USER_TIMEOUT). Read off the real
connections' sockets, as `ss -o` would show them to an operator."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from urllib.parse import quote

import psycopg
import pytest
from django.db import connection

from notifications import selectors
from notifications.models import EventCounter
from taskhub.tests.test_settings import run_manage
from tasks.tests.row_lock import _conninfo

pytestmark = pytest.mark.django_db(transaction=True)


def probes_of(fileno: int) -> dict[str, int]:
    """The keepalive and user-timeout options of a connection's TCP socket."""
    with socket.socket(fileno=os.dup(fileno)) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            pytest.skip("the test database is reached over a Unix socket: no TCP to probe")
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }


# The user timeout covers the idle time and three probes: one lost probe ends nothing.
EXPECTED = {"keepalive": 1, "idle": 30, "interval": 10, "count": 3, "user_timeout_ms": 60_000}


def test_the_orms_connections_probe_a_silent_database():
    connection.ensure_connection()
    assert probes_of(connection.connection.fileno()) == EXPECTED


async def test_the_sockets_async_reads_probe_a_silent_database(alice):
    await selectors.anewest_event_id(user_id=alice.pk)  # opens the loop's pool connection
    pool = selectors._pool()
    try:
        assert probes_of(pool.idle[0].fileno()) == EXPECTED
    finally:
        await selectors.close_async_pool()


def test_a_database_url_that_sets_its_own_keepalive_keeps_it():
    db = connection.settings_dict
    user = quote(db["USER"], safe="") + (
        f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    )
    url = f"postgres://{user}@{quote(db['HOST'], safe='')}:{db['PORT']}/{db['NAME']}"
    result = run_manage(
        "shell",
        "--verbosity=0",
        "-c",
        "from django.conf import settings; o = settings.DATABASES['default']['OPTIONS'];"
        "print(o['keepalives_idle'], o['connect_timeout'], o['tcp_user_timeout'])",
        DEBUG="1",
        DATABASE_URL=f"{url}?keepalives_idle=60",
        DB_CONNECT_TIMEOUT="7",
    )
    assert result.returncode == 0, result.stderr
    # The user timeout follows the URL's idle time: still the idle time plus three probes.
    assert result.stdout.split() == ["60", "7", str((60 + 3 * 10) * 1000)]


async def test_a_socket_read_that_gets_no_answer_fails_within_its_time_limit(alice, settings):
    """A database that accepts a read and does not answer it (here: the table locked by
    another session) holds the read for WS_DB_READ_TIMEOUT, not for as long as it likes:
    it fails as an outage (a connect is closed with 4503), and the pool serves the next
    read once the database answers. (A silent host adds psycopg's own cancel attempt, up
    to 10 s: the selectors' fetch() says why; this server answers the cancel at once.)"""
    settings.TASKHUB_WS_DB_READ_TIMEOUT = 0.5
    locker = await psycopg.AsyncConnection.connect(_conninfo())
    try:
        await locker.execute(f"LOCK TABLE {EventCounter._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="WS_DB_READ_TIMEOUT"):
            await selectors.anewest_event_id(user_id=alice.pk)
        assert time.monotonic() - started < 3
        await locker.rollback()  # the database answers again
        assert await asyncio.wait_for(selectors.anewest_event_id(user_id=alice.pk), 5) == 0
    finally:
        await locker.close()
        await selectors.close_async_pool()
