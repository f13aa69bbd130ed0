"""Helpers for tests that start real processes: daphne, a Celery worker, beat.

They run with the test database pytest-django created, so a test that uses them needs the
`transactional_db` fixture (rows must be committed for another process to see them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection

from devserver import processes
from devserver.processes import spawn

BASE_DIR = Path(settings.BASE_DIR)
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def node_name(role: str) -> str:
    """A Celery node name of its own for a test's worker (`<role>-<6 hex>@test`), so no
    reply or leftover of another test's worker is taken for this one's."""
    return f"{role}-{uuid.uuid4().hex[:6]}@test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_for_a_restarted_server() -> int:
    """A free port below the kernel's ephemeral range, for a server that the test stops
    and starts again on the same port (devserver/own_servers.py). A port of that range
    (what free_port() gives) can be taken while the server is down by the local end of
    any outgoing connection on the machine, and the restart would then fail to bind. (Not
    seen yet: R2's failed restarts that suggested it were grpc's fork handlers,
    reliability/run.py.)"""
    low = min(_ephemeral_ports_start(), 32768)
    for _ in range(200):
        port = random.randrange(20000, low)  # noqa: S311 — a port number, not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 20000-{low - 1}")


def test_database_url() -> str:
    """DATABASE_URL of the database this test session runs on (pytest-django's test DB)."""
    params = connection.settings_dict
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


def process_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="taskhub.settings",
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.TASKHUB_REDIS_URL,
        DEBUG="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def python_child_json(source: str, *, timeout: float = 120) -> Any:
    """Run `source` in a fresh Python with the tests' environment (for what must not
    happen in the test process, such as installing Daphne's reactor) and return the JSON
    its last line of output printed; fail with its output if it did not exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", source],
        cwd=BASE_DIR,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


class ManagedProcess:
    """A child process whose output is kept (and echoed on failure) for assertions."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.lines: list[str] = []
        # SIGKILL if the test run dies, so no orphan outlives it; a session of its own, so
        # kill_group() reaches its children (a worker's pool) and a terminal's Ctrl-C does not.
        self.proc = spawn(
            args,
            death_signal=signal.SIGKILL,
            own_group=False,
            start_new_session=True,
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at EOF (the process ended), not left to the GC
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))

    def wait_until_up(self, ready: Callable[[], None]) -> None:
        """Run `ready` (which raises if the process does not come up); on failure end the
        process so that a failed start leaves nothing running."""
        try:
            ready()
        except BaseException:
            self.kill_group()
            raise

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.output[-4000:]}"
                )
            return text in self.output

        wait_until(seen, timeout=timeout, message=f"{self.name} to print {text!r}")

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait; SIGKILL the whole process group if it does not exit."""
        self.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def kill_group(self) -> None:
        """SIGKILL the process and its children (a crash, as the OOM killer does it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_worker(
    *,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
    node: str | None = None,
    queues: str | None = None,
) -> ManagedProcess:
    """A worker on the test database; without `queues` it consumes them all."""
    node = node or f"test-{uuid.uuid4().hex[:8]}@%h"
    line = processes.worker(queues=queues, concurrency=concurrency, node=node, lone=True)
    worker = ManagedProcess("worker", line.argv(), process_env(**(extra_env or {})))
    worker.wait_until_up(lambda: worker.wait_for_output(" ready.", timeout=60))
    return worker


def start_beat(*, extra_env: dict[str, str] | None = None, schedule_dir: Path) -> ManagedProcess:
    line = processes.beat(schedule_dir / "beat-schedule")
    beat = ManagedProcess("beat", line.argv(), process_env(**(extra_env or {})))
    beat.wait_until_up(lambda: beat.wait_for_output("beat: Starting", timeout=60))
    return beat


def start_daphne(
    *, port: int | None = None, extra_env: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    port = port or free_port()
    line = processes.web("127.0.0.1", port)
    web = ManagedProcess("web", line.argv(), process_env(**(extra_env or {})))
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if web.proc.poll() is not None:
            raise AssertionError(f"daphne exited:\n{web.output[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    web.wait_until_up(lambda: wait_until(healthy, timeout=60, message="daphne /healthz"))
    return web, base_url


def start_grpcserver(*, extra_env: dict[str, str] | None = None) -> tuple[ManagedProcess, str]:
    """The gRPC TaskService on a port the OS picks; (process, "127.0.0.1:<port>")."""
    line = processes.grpc("--host", "127.0.0.1", "--port", "0")
    server = ManagedProcess("grpcserver", line.argv(), process_env(**(extra_env or {})))
    server.wait_until_up(lambda: server.wait_for_output("listening on", timeout=60))
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", server.output).group(1)
    return server, f"127.0.0.1:{port}"
