"""The one way dev processes are started, and the one table of their command lines that
`make run`, the tests, bench/ and docker-compose.yml share (devserver/processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import yaml  # PyYAML, installed with drf-spectacular (requirements.txt)
from django.conf import settings

from devserver import launcher, processes
from devserver.testing import wait_until

ROOT = Path(settings.BASE_DIR)

# What the compose file adds to a line `make run` also runs, and why. make run's grpc reads
# HOST from its environment (docs/running.md); in its container gRPC must listen beyond
# loopback whatever HOST says, so compose passes it.
DEPLOYMENT_OPTIONS = {"grpc": ["--host", "0.0.0.0"]}


def compose_app_commands() -> dict[str, list[str]]:
    """`service: command` for every service of docker-compose.yml built from this image,
    except the one-shot `migrate` (the launcher's set-up step, not a process it keeps)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {
        name: service["command"]
        for name, service in compose["services"].items()
        if service.get("image") == "taskhub:latest" and name != "migrate"
    }


def make_run_commands(env: dict[str, str]) -> dict[str, list[str]]:
    """`process: command line` as `make run` would start them, with bare program names."""
    lines = {}
    for spec in launcher.app_commands(env, Path("/app/.data")):
        program = Path(spec.args[0])
        assert program.parent in (processes.BIN_DIR, Path()), spec.args
        lines[spec.name] = [program.name, *spec.args[1:]]
    return lines


def test_docker_compose_runs_the_command_lines_make_run_runs():
    # The compose file's settings: Daphne on 0.0.0.0:8000, beat's schedule under /app/.data.
    ours = make_run_commands({"HOST": "0.0.0.0", "PORT": "8000"})
    theirs = compose_app_commands()

    # Two web replicas behind nginx there, one web here: the same line.
    assert theirs.pop("web2") == theirs.pop("web1") == ours.pop("web")
    for name, extra in DEPLOYMENT_OPTIONS.items():
        ours[name] += extra
    assert theirs == ours


def test_several_workers_run_the_one_worker_line_with_a_node_name_each():
    env = {"HOST": "0.0.0.0", "PORT": "8000", "WORKERS": "2"}
    lines = make_run_commands(env)

    worker = processes.worker().argv(bin_dir=None)
    assert lines["worker1"] == [*worker, "-n", "worker1@%h"]
    assert lines["worker2"] == [*worker, "-n", "worker2@%h"]


def test_the_tests_and_the_bench_start_the_table_s_lines():
    # A test's or the bench's worker consumes every queue and skips the cluster chatter;
    # otherwise it is make run's worker.
    lone = processes.worker(queues=None, concurrency=2, node="t@%h", lone=True)
    assert lone.argv(bin_dir=None) == [
        "celery", "-A", "taskhub", "worker", "--loglevel=INFO",
        "--concurrency", "2", "-n", "t@%h", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    web = processes.web("127.0.0.1", 8123).argv()
    assert web[:3] == [str(processes.BIN_DIR / "python"), "-m", "taskhub.daphne_server"]


# The child writes each file whole under a temporary name and renames it, so the test never
# reads a file that exists but is still empty (CI once read '' between open() and write()).
CHILD = """
import os, signal, sys, time
def write_whole(path, text):
    with open(path + ".part", "w") as f:
        f.write(text)
    os.replace(path + ".part", path)
def record(signum, frame):
    write_whole(sys.argv[1], signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, record)
write_whole(sys.argv[2], "up")
time.sleep(120)
"""

PARENT = """
import signal, subprocess, sys, time
from devserver import processes
child = processes.spawn([sys.executable, "-c", sys.argv[1], *sys.argv[2:]],
                        death_signal=signal.SIGTERM, stdin=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_spawned_child_gets_its_death_signal_when_the_parent_is_killed(tmp_path):
    received, up = tmp_path / "received", tmp_path / "up"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(received), str(up)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        wait_until(up.exists, timeout=30, message="the child to start")
        child = psutil.Process(child_pid)
        # setpriv exec'd in place: the pid the parent holds is the program it asked for,
        # in a process group of its own.
        assert child.cmdline()[:2] == [sys.executable, "-c"]
        assert os.getpgid(child_pid) == child_pid

        parent.kill()
        parent.wait(timeout=10)

        wait_until(received.exists, timeout=30, message="the child to be signalled")
        assert received.read_text() == "SIGTERM"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        parent.stdout.close()
