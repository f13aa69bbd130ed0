"""The product while a backing service is down (docs/running.md, "When Redis or PostgreSQL
is down"; issue 13, rows R2 and R3), against real processes and servers of the test's own:
the shared PostgreSQL and Redis are never stopped.

- Redis down, PostgreSQL up: Redis is a cache, a broker and a pipe, so creates still
  succeed; the rows wait `pending` and the dispatcher's tick sends them once Redis is
  back. The web logs one line for the outage, not a traceback per request.
- PostgreSQL down: the API answers 503 with Retry-After (gRPC: UNAVAILABLE), /readyz says
  not ready, one log line per outage; everything works again once it is back.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import redis

from conftest import access_token_for
from devserver import processes, testing
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REDIS_SERVER = shutil.which("redis-server") or shutil.which("valkey-server")


class OwnRedis:
    """A Redis of the test's own on a fixed free port, killed and restarted at will (no
    persistence: what a restarted cache and broker look like, everything in it gone)."""

    def __init__(self, workdir: Path) -> None:
        self.port = testing.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", "", "--appendonly", "no"]
        self.proc = processes.spawn(
            args,
            death_signal=signal.SIGKILL,
            own_group=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            testing.wait_until(up, timeout=15, message="redis-server to answer")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path):
    if REDIS_SERVER is None:
        pytest.skip("needs redis-server or valkey-server on PATH")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def _lines(process: testing.ManagedProcess, text: str) -> list[str]:
    return [line for line in process.lines if text in line]


def test_creates_succeed_while_redis_is_down_and_run_once_it_is_back(alice, own_redis, tmp_path):
    env = {
        "REDIS_URL": own_redis.url,
        # A run message lost with the broker is re-sent after this long (the default, 60 s,
        # is longer than the test should wait).
        "QUEUED_RESEND_AFTER": "5",
    }
    web, base_url = testing.start_daphne(extra_env=env)
    worker = testing.start_worker(extra_env=env)
    beat = testing.start_beat(extra_env=env, schedule_dir=tmp_path)
    headers = {"Authorization": f"Bearer {access_token_for(alice)}"}
    try:
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            before = http.post("/api/tasks/", json={"title": "before", "kind": "echo"})
            assert before.status_code == 201, before.text
            testing.wait_until(
                lambda: Task.objects.get(pk=before.json()["id"]).status == TaskStatus.COMPLETED,
                timeout=60,
                message="the task created before the outage to complete",
            )

            own_redis.kill()
            rest, legacy = [], []
            for n in range(15):
                created = http.post("/api/tasks/", json={"title": f"during {n}", "kind": "echo"})
                assert created.status_code == 201, created.text
                rest.append(created.json()["id"])
                old = http.post("/task/create", json={"task": f"legacy during {n}"})
                assert old.status_code == 200, old.text
                assert old.json()["status"] == "success"
                legacy.append(old.json()["task_id"])
            # Reads degrade too: the cache is skipped, the database answers.
            listing = http.get("/api/tasks/")
            assert listing.status_code == 200, listing.text
            detail = http.get(f"/api/tasks/{rest[0]}/")
            assert detail.status_code == 200, detail.text
            # Nothing could send their run messages: they wait for the dispatcher.
            during = Task.objects.filter(pk__in=rest + legacy)
            assert during.count() == 30
            assert set(during.values_list("status", flat=True)) == {TaskStatus.PENDING}
            # One line said Redis is gone; no request left a traceback.
            assert "Traceback" not in web.output, web.output[-6000:]
            assert len(_lines(web, "Redis unavailable")) == 1, web.output[-6000:]

            own_redis.start()
            # The worker reconnects to the broker, beat's tick reaches the dispatcher, and
            # the rows the nudges could not announce are queued and run.
            testing.wait_until(
                lambda: set(during.values_list("status", flat=True)) == {TaskStatus.COMPLETED},
                timeout=90,
                message="every task created during the outage to complete",
            )
            # Once Redis answers again the web says so, once.
            http.post("/api/tasks/", json={"title": "after", "kind": "echo"})
            testing.wait_until(
                lambda: _lines(web, "Redis available again"),
                timeout=10,
                message="the web to log that Redis is back",
            )
    finally:
        for process in (beat, worker, web):
            process.stop()

    assert len(_lines(web, "Redis unavailable")) == 1, web.output[-6000:]
    assert len(_lines(web, "Redis available again")) == 1, web.output[-6000:]
