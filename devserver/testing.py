"""Helpers for tests that start real processes: daphne, a Celery worker, beat.

They run with the test database pytest-django created, so a test that uses them needs the
`transactional_db` fixture (rows must be committed for another process to see them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
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
from typing import TypeVar

from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)
BIN_DIR = Path(sys.executable).parent
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        REDIS_URL=settings.REDIS_URL,
        DEBUG="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


# Linux: the child gets SIGKILL if the test run dies, so no orphan outlives it. Through
# util-linux's setpriv rather than a preexec_fn: Python code between fork and exec runs the
# at-fork hooks of every loaded extension, and grpc's crash the child once the gRPC tests
# have started its threads.
_SETPRIV = shutil.which("setpriv")
DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


class ManagedProcess:
    """A child process whose output is kept (and echoed on failure) for assertions."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*DIE_WITH_PARENT, *args],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
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
    worker = ManagedProcess(
        "worker",
        [
            str(BIN_DIR / "celery"),
            "-A",
            "taskhub",
            "worker",
            "-n",
            node,
            "--loglevel=INFO",
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            *(["-Q", queues] if queues else []),
        ],
        process_env(**(extra_env or {})),
    )
    worker.wait_until_up(lambda: worker.wait_for_output(" ready.", timeout=60))
    return worker


def start_beat(*, extra_env: dict[str, str] | None = None, schedule_dir: Path) -> ManagedProcess:
    beat = ManagedProcess(
        "beat",
        [
            str(BIN_DIR / "celery"),
            "-A",
            "taskhub",
            "beat",
            "--loglevel=INFO",
            "--schedule",
            str(schedule_dir / "beat-schedule"),
        ],
        process_env(**(extra_env or {})),
    )
    beat.wait_until_up(lambda: beat.wait_for_output("beat: Starting", timeout=60))
    return beat


def start_daphne(
    *, port: int | None = None, extra_env: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    port = port or free_port()
    web = ManagedProcess(
        "web",
        [str(BIN_DIR / "daphne"), "-b", "127.0.0.1", "-p", str(port), "taskhub.asgi:application"],
        process_env(**(extra_env or {})),
    )
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
