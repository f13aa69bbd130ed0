"""`make run` on a fresh machine: when the embedded PostgreSQL or Valkey dies, the launcher
starts it again (same data, same port) instead of stopping the stack, and the app
processes come back by themselves (issue 13, R2; docs/running.md, "When an embedded server
dies").

One real launcher with DATABASE_URL/REDIS_URL unset, its data in a directory of its own;
the servers are SIGKILLed as the OOM killer would, and a client keeps using the API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect as ws_connect

from devserver import testing

pytestmark = pytest.mark.e2e

# Spelled out, not imported: the test checks the product from the outside.
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class Stack:
    launcher: testing.ManagedProcess
    data_dir: Path
    base_url: str
    token: str = ""

    def ports(self) -> dict[str, int]:
        return json.loads((self.data_dir / "ports.json").read_text())

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])

    def valkey_pid(self) -> int:
        port = self.ports()["valkey"]
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
        raise AssertionError(f"nothing listens on valkey's port {port}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def create(self) -> httpx.Response | None:
        """One REST create; None if the web process could not be reached at all."""
        try:
            return httpx.post(
                f"{self.base_url}/api/tasks/",
                json={"title": "after the restart", "kind": "echo", "params": {"n": 1}},
                headers=self.headers(),
                timeout=15,
            )
        except httpx.HTTPError:
            return None

    def status_of(self, task_id: str) -> str | None:
        try:
            got = httpx.get(
                f"{self.base_url}/api/tasks/{task_id}/", headers=self.headers(), timeout=5
            )
        except httpx.HTTPError:
            return None
        return got.json()["status"] if got.status_code == 200 else None

    def create_and_run(self, *, within: float) -> None:
        """A REST create answers 201 again and the task runs to its end, within `within`."""
        created = testing.wait_until(
            lambda: (r := self.create()) is not None and r.status_code == 201 and r,
            timeout=within,
            interval=0.5,
            message="a REST create answered 201",
        )
        task_id = created.json()["id"]
        status = testing.wait_until(
            lambda: (s := self.status_of(task_id)) in TERMINAL and s,
            timeout=within,
            interval=0.5,
            message=f"task {task_id} to finish",
        )
        assert status == "completed", self.launcher.output[-3000:]

    def socket_welcomed(self) -> bool:
        url = self.base_url.replace("http://", "ws://") + f"/ws?token={self.token}"
        try:
            with ws_connect(url, origin=self.base_url, open_timeout=5) as ws:
                return json.loads(ws.recv(timeout=5))["type"] == "welcome"
        except Exception:  # refused, closed with 4503 while Redis is away, ...
            return False


@pytest.fixture
def stack() -> Iterator[Stack]:
    # Not under pytest's basetemp: as root, PostgreSQL runs as its own user and must reach
    # the directory (the launcher would chmod o+x pytest's 0700 base, which pytest undoes).
    data_dir = Path(tempfile.mkdtemp(prefix="taskhub-restart-"))
    data_dir.chmod(0o755)
    port = testing.free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "TASKHUB_EMBEDDED_DATA",
            "TASKHUB_LAUNCHER_DATA",
            "PROMETHEUS_MULTIPROC_DIR",
        }
    }
    env.update(
        TASKHUB_DATA_DIR=str(data_dir),
        HOST="127.0.0.1",
        PORT=str(port),
        GRPC_PORT=str(testing.free_port()),
        WORKER_CONCURRENCY="1",
        TASKHUB_STOP_TIMEOUT="15",
        DEBUG="1",
        PYTHONUNBUFFERED="1",
    )
    launcher = testing.ManagedProcess(
        "launcher", [sys.executable, "-m", "devserver.launcher", "run"], env
    )
    try:
        launcher.wait_until_up(lambda: launcher.wait_for_output("launch | started", timeout=180))
        stack = Stack(launcher, data_dir, f"http://127.0.0.1:{port}")
        launcher.wait_until_up(
            lambda: testing.wait_until(stack.ready, timeout=60, message="/readyz answering 200")
        )
        stack.token = sign_up(stack.base_url)
        yield stack
        assert launcher.stop(signal.SIGINT, timeout=90) == 0, launcher.output[-4000:]
        assert "stopped cleanly" in launcher.output
    finally:
        if launcher.proc.poll() is None:
            launcher.kill_group()
        shutil.rmtree(data_dir, ignore_errors=True)


def sign_up(base_url: str) -> str:
    username, password = f"u{uuid.uuid4().hex[:10]}", "a-long-pass-phrase"
    made = httpx.post(
        f"{base_url}/api/auth/register/",
        json={"username": username, "password": password},
        timeout=15,
    )
    assert made.status_code == 201, made.text
    token = httpx.post(
        f"{base_url}/api/auth/token/",
        json={"username": username, "password": password},
        timeout=15,
    )
    return token.json()["access"]


def test_the_launcher_restarts_a_killed_embedded_postgresql_and_valkey(stack):
    stack.create_and_run(within=60)
    ports = stack.ports()

    # PostgreSQL's postmaster dies (its backends follow): the launcher starts it again.
    os.kill(stack.postmaster_pid(), signal.SIGKILL)
    stack.launcher.wait_for_output(
        "launch | WARNING: postgres exited with signal SIGKILL; restarted", timeout=90
    )
    stack.create_and_run(within=60)

    # Valkey dies (the broker, the channel layer, the cache): the same.
    os.kill(stack.valkey_pid(), signal.SIGKILL)
    stack.launcher.wait_for_output(
        "launch | WARNING: valkey exited with signal SIGKILL; restarted", timeout=60
    )
    stack.create_and_run(within=60)
    testing.wait_until(stack.socket_welcomed, timeout=30, interval=0.5, message="a socket welcomed")

    # Same ports (the app processes were started with these URLs), and nothing stopped.
    assert stack.ports() == ports
    assert f"127.0.0.1:{ports['postgres']}" in stack.launcher.output.split("postgres exited")[1]
    assert stack.launcher.proc.poll() is None
    assert "exited unexpectedly" not in stack.launcher.output
    assert stack.launcher.output.count("restarted on 127.0.0.1") == 2
