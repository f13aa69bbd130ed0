"""The system under test: a fresh database, and Daphne, one Celery worker and beat started
as subprocesses (each in its own session) and stopped by PID, whatever happens; and the
references (bench/ref_*.py) started the same way, with the same environment.

The stack is configured only through its environment (STACK_ENV below, printed with the
results): the product's code is measured as it is in the tree."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from devserver import processes

if TYPE_CHECKING:
    from devserver.testing import ManagedProcess

BIN_DIR = processes.BIN_DIR

# The stack under test, as production runs it (DEBUG off: with DEBUG on Django keeps every
# query of a connection in memory, which a 60 s load run would measure), with two limits
# raised that the scale scenarios would otherwise hit by design rather than by cost:
# - THROTTLE_USER: the REST scenario sends every request as one user (wrk -c32);
#   throttling is still evaluated on every request, its limit is just not reached.
# - WS_IDLE_TIMEOUT: bench sockets only listen; a scale run holds them for minutes.
STACK_ENV = {
    "DEBUG": "0",
    "THROTTLE_USER": "100000000/min",
    "WS_IDLE_TIMEOUT": "3600",
}


class BenchError(Exception):
    """A benchmark could not run as intended; the message says what to fix."""


def is_loopback(host: str | None) -> bool:
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_local(database_url: str, redis_url: str) -> None:
    """The run drops and creates a database and floods a broker: only on this machine."""
    db_host = urlsplit(database_url).hostname
    # No host at all is libpq's Unix socket, which is local too.
    if db_host and not is_loopback(db_host):
        raise BenchError(f"DATABASE_URL must point at this machine (127.0.0.1), not {db_host}")
    redis_host = urlsplit(redis_url).hostname
    if not is_loopback(redis_host):
        raise BenchError(f"REDIS_URL must point at this machine (127.0.0.1), not {redis_host}")


def _bench_name(database_url: str) -> str:
    # The suffix is always added, so the database DATABASE_URL names is never the one dropped.
    return f"{urlsplit(database_url).path.lstrip('/') or 'taskhub'}_bench"


def bench_database_url(database_url: str) -> str:
    """The URL of `<name>_bench`, next to DATABASE_URL's database on the same server."""
    return urlunsplit(urlsplit(database_url)._replace(path=f"/{_bench_name(database_url)}"))


def prepare_database(database_url: str) -> None:
    """Drop and re-create `<name>_bench` next to DATABASE_URL's database."""
    parts = urlsplit(database_url)
    bench_name = _bench_name(database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            # FORCE ends sessions a previous, interrupted run may have left behind.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(bench_name)
                )
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(bench_name)))
    except psycopg.Error as exc:
        raise BenchError(f"could not re-create database {bench_name}: {exc}") from exc


class Stack:
    """Daphne on a free port, a Celery worker (--concurrency N, a unique node name) and
    beat (its schedule file in a temporary directory), all with the bench environment."""

    def __init__(self, *, env: dict[str, str], concurrency: int = 2) -> None:
        # Imported here: devserver.testing reads Django settings, set up by the runner.
        from devserver.testing import free_port

        self.env = env
        self.concurrency = concurrency
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.node = f"bench-{uuid.uuid4().hex[:8]}@%h"
        self.tmp = Path(tempfile.mkdtemp(prefix="taskhub-bench-"))
        self.processes: dict[str, ManagedProcess] = {}

    @property
    def daphne_pid(self) -> int:
        return self.processes["web"].proc.pid

    @property
    def worker_pid(self) -> int:
        return self.processes["worker"].proc.pid

    def _web_command(self) -> list[str]:
        return processes.web("127.0.0.1", self.port).argv()

    def restart_web(self, *, timeout: float = 60.0) -> None:
        """A fresh Daphne on the same port: each scale step starts from the same state,
        so one step's leftovers (sockets still being cleaned up) do not skew the next."""
        from devserver.testing import ManagedProcess

        old = self.processes.pop("web")
        try:
            old.stop(signal.SIGTERM, timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.proc.pid, signal.SIGKILL)
        self.processes["web"] = ManagedProcess("web", self._web_command(), self.env)
        self._wait_http(self.base_url + "/healthz", self.processes["web"], timeout)

    def start_extra(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        ready_url: str | None = None,
        ready_text: str | None = None,
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start a reference server (or restart it: an old one of that name is stopped)."""
        from devserver.testing import ManagedProcess

        old = self.processes.pop(name, None)
        if old is not None:
            old.stop(signal.SIGTERM, timeout=20)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.proc.pid, signal.SIGKILL)
        process = ManagedProcess(name, args, env or self.env)
        self.processes[name] = process
        if ready_text is not None:
            process.wait_for_output(ready_text, timeout=timeout)
        if ready_url is not None:
            self._wait_http(ready_url, process, timeout)
        return process

    def stop_extra(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        try:
            process.stop(signal.SIGTERM, timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.proc.pid, signal.SIGKILL)

    def start(self, *, timeout: float = 90.0) -> None:
        from devserver.testing import ManagedProcess

        # The same command lines as `make run` and the tests (devserver/processes.py); one
        # worker consumes every queue, as in the tests.
        worker = processes.worker(
            queues=None, concurrency=self.concurrency, node=self.node, lone=True
        )
        commands = {
            "worker": worker.argv(),
            "beat": processes.beat(self.tmp / "celerybeat-schedule").argv(),
            "web": self._web_command(),
        }
        # All three start at once (each takes seconds to import Django); then we wait.
        for name, args in commands.items():
            self.processes[name] = ManagedProcess(name, args, self.env)
        self.processes["worker"].wait_for_output(" ready.", timeout=timeout)
        self._wait_beat(timeout)
        self._wait_healthy(timeout)

    def _wait_beat(self, timeout: float) -> None:
        # Beat logs nothing we could wait for (Celery leaves the root logger alone and beat
        # never applies Django's LOGGING), but its scheduler creates the schedule file when
        # it starts ticking.
        beat = self.processes["beat"]
        deadline = time.monotonic() + timeout
        while not any(self.tmp.glob("celerybeat-schedule*")):
            if beat.proc.poll() is not None:
                raise BenchError(f"beat exited:\n{beat.output[-3000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"beat did not create its schedule file within {timeout:.0f} s")
            time.sleep(0.1)

    def _wait_healthy(self, timeout: float) -> None:
        self._wait_http(f"{self.base_url}/healthz", self.processes["web"], timeout)

    @staticmethod
    def _wait_http(url: str, process: ManagedProcess, timeout: float) -> None:
        """Until `url` answers at all (any HTTP status: the server is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.proc.poll() is not None:
                raise BenchError(f"{process.name} exited:\n{process.output[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{process.name} did not answer {url} within {timeout:.0f} s")

    def outputs(self, tail: int = 40) -> dict[str, list[str]]:
        return {name: process.lines[-tail:] for name, process in self.processes.items()}

    def stop(self) -> None:
        """SIGTERM each leader (celery's main process must drive its pool's shutdown), wait,
        then SIGKILL whatever is left in its process group. Never raises."""
        for name in ("web", "beat", "worker", *self.processes):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            try:
                process.stop(signal.SIGTERM, timeout=20)
            except Exception as exc:
                print(f"bench: stopping {name} failed: {exc}", file=sys.stderr)
            # Pool children the leader left behind: the group is ours (start_new_session).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)
