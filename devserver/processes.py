"""One way to start a child process, and one table of the command lines TaskHub runs.

The launcher (`make run`), the test harness (devserver/testing.py) and bench/stack.py build
their processes' command lines here; docker-compose.yml writes the same lines out by hand
and devserver/tests/test_processes.py holds it to them. docs/architecture.md, "Development
tooling".
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Not resolved: .venv/bin/python is a symlink to the base interpreter, the scripts are here.
BIN_DIR = Path(sys.executable).parent
ASGI_APPLICATION = "taskhub.asgi:application"
WEB_SERVER = "taskhub.daphne_server"
CELERY_APP = "taskhub"

# --- spawning ------------------------------------------------------------------------------

# util-linux's setpriv sets the child's death signal (PR_SET_PDEATHSIG) between fork and
# exec. Not a preexec_fn: Python code there runs the at-fork hooks of every loaded
# extension, and grpc's crashed the child once its threads existed (git log: "die-with-parent
# through setpriv"); without a preexec_fn, subprocess also forks without running any Python.
# setpriv execs in place, so the pid and the process are the ones asked for. It does not
# check whether the parent died before it set the signal (a window of microseconds); the
# launcher's next start stops such a leftover by its environment marker.
SETPRIV = shutil.which("setpriv")


def die_with_parent(death_signal: int = signal.SIGKILL) -> list[str]:
    """The prefix that makes a command receive `death_signal` when its parent thread ends
    (Linux); empty where setpriv is missing."""
    if SETPRIV is None:
        return []
    return [SETPRIV, "--pdeathsig", signal.Signals(death_signal).name, "--"]


def spawn(
    args: list[str],
    *,
    death_signal: int = signal.SIGTERM,
    own_group: bool = True,
    run_as: pwd.struct_passwd | None = None,
    **popen: Any,
) -> subprocess.Popen:
    """Start a child that gets `death_signal` when its parent dies, in a process group of its
    own unless `own_group` is False (then `popen` may still ask for start_new_session).

    Call it from a thread that lives as long as the child should: the kernel sends the death
    signal when the *thread* that forked the child ends (the launcher spawns from its main
    thread).
    """
    if run_as is not None:
        # Done by subprocess in C before exec; setpriv then sets the death signal as that
        # user (a credential change afterwards would clear it).
        popen.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
    return subprocess.Popen(
        [*die_with_parent(death_signal), *args],
        process_group=0 if own_group else None,
        **popen,
    )


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --- the process table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A program of the virtualenv (or of the image's PATH) and its arguments."""

    program: str
    args: tuple[str, ...]

    def argv(self, bin_dir: Path | None = BIN_DIR) -> list[str]:
        """The command line: the program from `bin_dir` (the venv's scripts, which a child
        finds whatever its PATH), or its bare name as docker-compose writes it (None)."""
        program = self.program if bin_dir is None else str(bin_dir / self.program)
        return [program, *self.args]


def web(host: str, port: int) -> Command:
    """Daphne serving everything HTTP and the WebSocket, through TaskHub's entry point
    (taskhub/daphne_server.py: Daphne's command line plus the WebSocket limits and the
    access log redaction its options do not reach)."""
    return Command("python", ("-m", WEB_SERVER, "-b", host, "-p", str(port), ASGI_APPLICATION))


def worker(
    *,
    queues: str | None = "celery",
    concurrency: int | str | None = None,
    node: str | None = None,
    lone: bool = False,
) -> Command:
    """A task worker on `queues` (None: every queue, as one worker of a test or the bench
    does all the work). `lone`: no gossip or mingle; a worker with no siblings would only
    wait for their replies at start-up."""
    args = ["-A", CELERY_APP, "worker", "--loglevel=INFO"]
    if queues:
        args += ["-Q", queues]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if node:
        args += ["-n", node]
    if lone:
        args += ["--without-gossip", "--without-mingle"]
    return Command("celery", tuple(args))


def dispatch() -> Command:
    """The dispatcher, reaper and retention on a queue of their own, so they keep running
    while every slot of the task workers is busy (settings.CELERY_TASK_QUEUES)."""
    return worker(queues="dispatch", concurrency=1, node="dispatch@%h")


def beat(schedule: str | Path) -> Command:
    return Command(
        "celery", ("-A", CELERY_APP, "beat", "--loglevel=INFO", "--schedule", str(schedule))
    )


def grpc(*options: str) -> Command:
    """The gRPC TaskService (`manage.py grpcserver`, docs/grpc.md); `options` as --host."""
    return Command("python", ("manage.py", "grpcserver", *options))
