"""TaskHub behind PgBouncer in transaction mode, as docs/scaling.md tells production to
run it: a real pgbouncer (Debian's package) in front of the test database, a real Daphne
and worker talking to PostgreSQL only through it.

Transaction pooling hands each transaction to any server connection, so nothing may rely
on session state: no server-side cursors, no prepared statements (psycopg prepares a query
it has run five times on one connection; PgBouncer before 1.21 then fails with "prepared
statement ... does not exist" on the next connection it lands on).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from websockets.asyncio.client import connect as ws_connect

from conftest import access_token_for
from devserver import testing

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed (apt pgbouncer)"),
]


@pytest.fixture
def pgbouncer(tmp_path: Path):
    """A transaction-mode PgBouncer on a free port, in front of the test database."""
    params = connection.settings_dict
    port = testing.free_port()
    server = f"host={params.get('HOST') or '127.0.0.1'} port={params.get('PORT') or 5432}"
    (tmp_path / "pgbouncer.ini").write_text(
        f"""
[databases]
* = {server} user={params.get("USER") or "postgres"}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 500
default_pool_size = 5
# Several server connections, handed out in turn: what a busy PgBouncer does, and what
# exposes anything that leans on one server session (a serial client would otherwise get
# the same one back every time).
min_pool_size = 3
server_round_robin = 1
ignore_startup_parameters = extra_float_digits,options
"""
    )
    # It refuses to run as root; its log goes to stderr, kept by ManagedProcess.
    user = ["-u", "postgres"] if _is_root() else []
    tmp_path.chmod(0o755)
    process = testing.ManagedProcess(
        "pgbouncer", [PGBOUNCER, *user, str(tmp_path / "pgbouncer.ini")], testing.process_env()
    )
    testing.wait_until(lambda: _answers(port), timeout=20, message="pgbouncer to listen")
    url = testing.test_database_url().replace(f":{params.get('PORT') or 5432}/", f":{port}/")
    yield url
    process.stop()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _answers(port: int) -> bool:
    result = subprocess.run(
        ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False, timeout=5
    )
    return result.returncode == 0


async def test_sockets_and_tasks_work_through_pgbouncer_in_transaction_mode(
    alice, pgbouncer, purge_broker
):
    env = {"DATABASE_URL": pgbouncer}
    web, base_url = await asyncio.to_thread(testing.start_daphne, extra_env=env)
    worker = await asyncio.to_thread(testing.start_worker, extra_env=env)
    try:
        token = await sync_to_async(access_token_for)(alice)
        headers = {"Authorization": f"Bearer {token}"}
        url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
            # Many more than psycopg's prepare threshold (5) of the same reads, several at
            # once so they spread over the pooled connections and PgBouncer's servers:
            # welcome (user, newest id) and resume, with creates in between.
            async def welcome(last_event_id: int) -> dict:
                async with ws_connect(url + f"&last_event_id={last_event_id}") as ws:
                    return json.loads(await ws.recv())

            for round_ in range(12):
                welcomes = await asyncio.gather(*(welcome(n) for n in range(8)))
                assert [w["type"] for w in welcomes] == ["welcome"] * 8, welcomes
                created = await http.post(
                    "/api/tasks/", json={"title": f"t{round_}", "kind": "echo"}
                )
                assert created.status_code == 201, created.text
            async with ws_connect(url + "&last_event_id=0") as ws:
                ids = []
                async with asyncio.timeout(60):
                    while len(ids) < 12 * 4:  # pending, queued, in_progress, completed
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "task.updated":
                            ids.append(frame["id"])
                listing = await http.get("/api/tasks/?status=completed")
    finally:
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(web.stop)

    assert listing.json()["count"] >= 1
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for process in (web, worker):
        assert "prepared statement" not in process.output, process.output[-3000:]
        assert "Traceback" not in process.output, process.output[-3000:]
