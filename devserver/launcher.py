"""The run launcher behind `make run`, `make test` and `make services`.

    python -m devserver.launcher run              # backing services, migrate, web/worker/beat/grpc
    python -m devserver.launcher test [pytest...] # backing services, then pytest
    python -m devserver.launcher services         # only the backing services, in the foreground

With DATABASE_URL and REDIS_URL both set, those are used and nothing is embedded; otherwise
PostgreSQL and Valkey are started from pip packages with their data under ./.data (or
TASKHUB_DATA_DIR; `test` uses <data>/test, so it can run next to `run`). See docs/running.md.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import psutil

from devserver import embedded, nginx, processes
from devserver.embedded import EmbeddedError

PROJECT_DIR = Path(__file__).resolve().parent.parent
BIN_DIR = processes.BIN_DIR
GRPC_COMMAND = PROJECT_DIR / "tasks" / "management" / "commands" / "grpcserver.py"
NAME_WIDTH = 6
SELF = "launch"

log = logging.getLogger("devserver.launcher")


class LaunchError(RuntimeError):
    """Start-up cannot go on; the message tells the user what to do."""


# --- output --------------------------------------------------------------------------------

_COLORS = {"web": 36, "worker": 33, "beat": 35, "grpc": 34, "setup": 32, SELF: 1}


class Console:
    """Prefixed lines from many reader threads, never interleaved mid-line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        # Re-entrant: a signal handler may log while the main thread is inside write().
        self._lock = threading.RLock()
        self._broken = False
        self._color = stream.isatty() and not os.environ.get("NO_COLOR")

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{NAME_WIDTH}} |"
        if self._color:
            prefix = f"\033[{_COLORS.get(name, 0)}m{prefix}\033[0m"
        with self._lock:
            if self._broken:
                return  # keep draining the children's pipes, or they block on a full pipe
            try:
                self._stream.write(f"{prefix} {text}\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._broken = True


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname}: {text}"
        self.console.line(SELF, text)


def _pump(console: Console, name: str, stream: IO[bytes]) -> None:
    with stream:
        for raw in iter(stream.readline, b""):
            console.line(name, raw.decode("utf-8", "replace").rstrip("\r\n"))


def start_pump(console: Console, name: str, stream: IO[bytes] | None) -> threading.Thread:
    assert stream is not None
    thread = threading.Thread(target=_pump, args=(console, name, stream), daemon=True)
    thread.start()
    return thread


# --- signals -------------------------------------------------------------------------------


class Signals:
    """SIGINT/SIGTERM/SIGHUP only record; the main loop decides. A second one forces."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._event = threading.Event()

    def install(self) -> None:
        # Explicitly, also for SIGINT: a shell starts background jobs with SIGINT ignored,
        # and an ignored signal would stay ignored in every child after exec.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        self._event.set()

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def forced(self) -> bool:
        return len(self.received) >= 2

    def first_name(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else "?"

    def wait(self, timeout: float) -> None:
        if not self._event.is_set():
            self._event.wait(timeout)


# --- backing services ----------------------------------------------------------------------


def data_root() -> Path:
    raw = os.environ.get("TASKHUB_DATA_DIR") or str(PROJECT_DIR / ".data")
    return Path(raw).expanduser().resolve()


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def external_urls() -> tuple[str, str] | None:
    """DATABASE_URL/REDIS_URL to use as they are, or None to start the embedded servers."""
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if database_url and redis_url:
        source = os.environ.get(embedded.ENV_FILE_MARKER)
        # A shell that sourced .data/env keeps the URLs after that launcher is gone; taking
        # them at face value would point everything at servers that no longer run.
        if source and not embedded.lock_is_held(Path(source)):
            log.info("DATABASE_URL/REDIS_URL come from %s/env, whose launcher is gone", source)
            return None
        return database_url, redis_url
    if database_url or redis_url:
        only = "DATABASE_URL" if database_url else "REDIS_URL"
        log.warning("only %s is set: starting both embedded servers (set both to use yours)", only)
    return None


@dataclass
class Backing:
    database_url: str
    redis_url: str
    servers: embedded.Embedded | None
    locked: bool  # we hold the data dir's lock, so crash leftovers can be told apart

    def dead_server(self) -> embedded.ServerProcess | None:
        return self.servers.dead_server() if self.servers else None

    def restart_server(
        self, dead: embedded.ServerProcess, signals: Signals, history: dict[str, list[float]]
    ) -> bool:
        """Start an embedded server that died again, on its port with its data, at most
        RESTART_LIMIT times in RESTART_WINDOW; False (after saying why) when it is not."""
        assert self.servers is not None
        code = describe_exit(dead.proc.returncode)
        recent = recent_restarts(history.get(dead.name, []))
        if recent is None:
            log.error(
                "%s died %d times within %.0f s", dead.name, RESTART_LIMIT + 1, RESTART_WINDOW
            )
            return False
        history[dead.name] = recent
        started = time.monotonic()
        try:
            server = self.servers.restart(dead, lambda: signals.requested)
        except KeyboardInterrupt:
            return True  # the loop sees the signal and stops everything
        except EmbeddedError as exc:
            log.error("%s exited with %s and could not be restarted: %s", dead.name, code, exc)
            return False
        log.warning(
            "%s exited with %s; restarted on 127.0.0.1:%d with its data in %.1f s "
            "(the app processes reconnect by themselves; see %s)",
            dead.name,
            code,
            server.port,
            time.monotonic() - started,
            server.log_path,
        )
        return True


@contextlib.contextmanager
def backing_services(
    data_dir: Path,
    signals: Signals,
    urls: tuple[str, str] | None,
    *,
    always_lock: bool,
    preflight: Callable[[], None] | None = None,
) -> Iterator[Backing]:
    """`urls` (from the env), or embedded servers that are stopped when the block ends.

    `preflight` runs after a crashed launcher's leftovers are gone (a dying grpcserver
    still holds its port for its grace period) and before anything is started.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = embedded.DataDirLock(data_dir)
    if urls is None or always_lock:
        lock.acquire()
    servers: embedded.Embedded | None = None
    try:
        if lock.held:
            embedded.stop_leftover_children(data_dir)
        if preflight is not None:
            preflight()
        if urls is None:
            servers = embedded.start_embedded(data_dir, lambda: signals.requested)
            urls = (servers.database_url, servers.redis_url)
            log.info("env for other shells: source %s", data_dir / "env")
        else:
            log.info(
                "using DATABASE_URL=%s and REDIS_URL=%s; nothing embedded",
                redact(urls[0]),
                redact(urls[1]),
            )
        yield Backing(urls[0], urls[1], servers, lock.held)
    finally:
        if servers is not None:
            servers.stop()
        lock.release()


def child_env(backing: Backing, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(embedded.ENV_FILE_MARKER, None)
    env.update(
        DATABASE_URL=backing.database_url,
        REDIS_URL=backing.redis_url,
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
    )
    if backing.locked:
        # Only under the lock: the next launcher kills whatever still carries this marker.
        env[embedded.CHILD_MARKER] = str(data_dir)
    env.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    # A development run: settings require SECRET_KEY unless DEBUG is on. Without one,
    # every process of the run signs with the random key kept beside its data, made on
    # first start (taskhub/secret_key.py); `make test` keeps its own under .data/test/.
    env.setdefault("DEBUG", "1")
    env.setdefault("SECRET_KEY_FILE", str(data_dir / "secret_key"))
    return env


# --- child processes -----------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    pump: threading.Thread
    spec: AppProcess | None = None
    restarts: list[float] = field(default_factory=list)


def start_child(console: Console, name: str, args: list[str], env: dict[str, str]) -> Child:
    proc = processes.spawn(
        args,
        death_signal=signal.SIGTERM,
        env=env,
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return Child(name, proc, start_pump(console, name, proc.stdout))


def start_app_process(
    console: Console, spec: AppProcess, env: dict[str, str], *, restarts: list[float] | None = None
) -> Child:
    child = start_child(console, spec.name, spec.args, {**env, **spec.env})
    child.spec = spec
    child.restarts = restarts or []
    return child


def loopback_of(host: str) -> str:
    """The address this machine reaches a server listening on `host` at."""
    if host in ("", "0.0.0.0"):  # noqa: S104 (a listen address, read here)
        return "127.0.0.1"
    return "::1" if host == "::" else host


def _wait(
    done: Callable[[], bool],
    waiting_for: Callable[[], str],
    children: list[Child],
    signals: Signals,
) -> None:
    """Poll `done` until it is true; LaunchError if a child dies meanwhile or 120 s pass
    ("not ready after 120 s: " + `waiting_for()`)."""
    deadline = time.monotonic() + 120
    while not done():
        if signals.requested:
            raise KeyboardInterrupt
        dead = next((c for c in children if c.proc.poll() is not None), None)
        if dead is not None:
            raise LaunchError(f"{dead.name} exited with {describe_exit(dead.proc.returncode)}")
        if time.monotonic() > deadline:
            raise LaunchError(f"not ready after 120 s: {waiting_for()}")
        signals.wait(0.2)


def wait_until_listening(host: str, port: int, children: list[Child], signals: Signals) -> None:
    """Wait until host:port takes a TCP connection (see _wait)."""

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
            return True
        return False

    _wait(listening, lambda: f"nothing listens on {host}:{port}", children, signals)


def wait_until_ready(urls: tuple[str, ...], children: list[Child], signals: Signals) -> None:
    """Wait until every URL answers 200, one after another (see _wait)."""
    pending = list(urls)

    def answered() -> bool:
        while pending:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(pending[0], timeout=2) as response,
            ):
                if response.status == 200:
                    pending.pop(0)
                    continue
            return False
        return True

    _wait(answered, lambda: ", ".join(pending), children, signals)


# A restartable process that dies this often within the window is broken, not unlucky.
RESTART_LIMIT, RESTART_WINDOW = 5, 60.0


def recent_restarts(times: list[float]) -> list[float] | None:
    """The restart times within the window, now included; None if that is over the limit."""
    now = time.monotonic()
    recent = [t for t in times if now - t < RESTART_WINDOW] + [now]
    return None if len(recent) > RESTART_LIMIT else recent


def restart_if_allowed(console: Console, dead: Child, env: dict[str, str]) -> Child | None:
    """A fresh process in place of `dead`, or None if it may not be restarted."""
    if dead.spec is None or not dead.spec.restart:
        return None
    recent = recent_restarts(dead.restarts)
    if recent is None:
        log.error("%s died %d times within %.0f s", dead.name, RESTART_LIMIT + 1, RESTART_WINDOW)
        return None
    # Reap what it left in its group (a worker's pool processes) before the new one starts.
    processes.signal_group(dead.proc.pid, signal.SIGKILL)
    dead.pump.join(timeout=2)
    log.warning(
        "%s exited with %s; restarting it (its siblings carry the load meanwhile)",
        dead.name,
        describe_exit(dead.proc.returncode),
    )
    return start_app_process(console, dead.spec, env, restarts=recent)


def stop_timeout() -> float:
    raw = os.environ.get("TASKHUB_STOP_TIMEOUT") or "30"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise LaunchError(f"TASKHUB_STOP_TIMEOUT must be a number of seconds > 0, got {raw!r}")
    return value


def stop_children(children: list[Child], signals: Signals) -> None:
    started = time.monotonic()
    for child in children:
        if child.proc.poll() is None:
            # The leader only: celery's main process must drive its pool's shutdown (and
            # record interrupted tasks); signalling the whole group would bypass it.
            child.proc.send_signal(signal.SIGTERM)
    deadline = started + stop_timeout()
    while any(c.proc.poll() is None for c in children):
        if signals.forced:
            log.warning("second signal: killing the remaining processes now")
            break
        if time.monotonic() > deadline:
            late = ", ".join(c.name for c in children if c.proc.poll() is None)
            log.warning("%s did not exit within %.0f s: SIGKILL", late, stop_timeout())
            break
        time.sleep(0.1)
    for child in children:
        # Also reaps what the leader left in its group (e.g. pool processes).
        processes.signal_group(child.proc.pid, signal.SIGKILL)
        code = child.proc.wait()
        child.pump.join(timeout=2)
        log.info("%s exited with %s", child.name, describe_exit(code))
    log.info("app processes stopped in %.1f s", time.monotonic() - started)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def python() -> str:
    return str(BIN_DIR / "python")


def script(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        raise LaunchError(f"{path} is missing: run `make venv`")
    return str(path)


def setup_database(console: Console, env: dict[str, str], signals: Signals) -> None:
    """migrate, and collectstatic beside it: it needs no database, and taskhub/settings.py
    always sets STATIC_ROOT (served by ServeStatic when DEBUG is off), so there is nothing
    to ask Django first."""
    started = time.monotonic()
    steps = {
        "migrate": [python(), "manage.py", "migrate", "--noinput"],
        "collectstatic": [python(), "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
    }
    children = {name: start_child(console, "setup", args, env) for name, args in steps.items()}
    while any(child.proc.poll() is None for child in children.values()):
        if signals.requested:
            stop_children(list(children.values()), signals)
            raise KeyboardInterrupt
        signals.wait(0.1)
    for name, child in children.items():
        child.pump.join(timeout=5)
        if child.proc.returncode != 0:
            code = describe_exit(child.proc.returncode)
            raise LaunchError(f"manage.py {name} failed with {code} (output above)")
    log.info("migrate + collectstatic done in %.1f s", time.monotonic() - started)


@dataclass(frozen=True)
class AppProcess:
    """One line of the process table `make run` starts (docker-compose.yml mirrors it)."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Restarted by the launcher when it dies, instead of stopping the run: a web instance
    # or a task worker that has siblings to carry the load meanwhile.
    restart: bool = False
    # Started only once these answer 200 (nginx waits for its web instances' /readyz, so
    # its first requests do not find every upstream refusing).
    wait_for: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    """How many of each `make run` starts: WEB_INSTANCES Daphne processes (behind nginx when
    more than one) and WORKERS task workers; docs/scaling.md."""

    host: str
    port: int
    web_instances: int
    workers: int
    internal_port: int | None = None

    @property
    def web_ports(self) -> list[int]:
        """One instance serves PORT itself; more listen on the ports after it, loopback only,
        with nginx on PORT (WEB_INTERNAL_PORT moves them)."""
        if self.web_instances == 1:
            return [self.port]
        base = self.internal_port or self.port + 1
        return [base + i for i in range(self.web_instances)]


def _count(env: dict[str, str], name: str, *, maximum: int) -> int:
    raw = env.get(name) or "1"
    try:
        value = int(raw)
    except ValueError:
        raise LaunchError(f"{name} must be a whole number, got {raw!r}") from None
    if not 1 <= value <= maximum:
        raise LaunchError(f"{name} must be between 1 and {maximum}, got {value}")
    return value


def _port(env: dict[str, str], name: str, default: str = "") -> int:
    raw = env.get(name) or default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"{name} must be a port number, got {raw!r}") from None


def topology(env: dict[str, str]) -> Topology:
    return Topology(
        host=env.get("HOST") or "127.0.0.1",
        port=_port(env, "PORT", "8000"),
        web_instances=_count(env, "WEB_INSTANCES", maximum=32),
        workers=_count(env, "WORKERS", maximum=32),
        internal_port=_port(env, "WEB_INTERNAL_PORT") if env.get("WEB_INTERNAL_PORT") else None,
    )


def app_commands(env: dict[str, str], data_dir: Path) -> list[AppProcess]:
    """What `make run` starts, each line from the one table (devserver/processes.py)."""
    shape = topology(env)
    for name in ("celery", "daphne"):
        script(name)  # a clear "run make venv" rather than a failed exec
    concurrency = env.get("WORKER_CONCURRENCY") or None

    several_webs, several_workers = shape.web_instances > 1, shape.workers > 1
    commands: list[AppProcess] = []
    if several_webs:
        binary = nginx.find_binary()
        if binary is None:
            raise LaunchError(nginx.INSTALL_HINT)
        config = nginx.write_config(
            listen_host=shape.host,
            listen_port=shape.port,
            backends=shape.web_ports,
            data_dir=data_dir,
        )
        for number, port in enumerate(shape.web_ports, start=1):
            commands.append(
                AppProcess(
                    f"web{number}",
                    processes.web("127.0.0.1", port).argv(),
                    # Behind nginx: trust the X-Forwarded-For entry it writes.
                    env={"INSTANCE_NAME": f"web{number}", "NUM_PROXIES": "1"},
                    restart=True,
                )
            )
        ready = tuple(f"http://127.0.0.1:{port}/readyz" for port in shape.web_ports)
        commands.append(AppProcess("nginx", nginx.command(binary, config), wait_for=ready))
    else:
        commands.append(AppProcess("web", processes.web(shape.host, shape.port).argv()))
    if several_workers:
        for number in range(1, shape.workers + 1):
            name = f"worker{number}"
            line = processes.worker(concurrency=concurrency, node=f"{name}@%h")
            commands.append(AppProcess(name, line.argv(), restart=True))
    else:
        commands.append(AppProcess("worker", processes.worker(concurrency=concurrency).argv()))
    commands += [
        AppProcess("dispatch", processes.dispatch().argv()),
        AppProcess("beat", processes.beat(data_dir / "celerybeat-schedule").argv()),
    ]
    if GRPC_COMMAND.exists():
        commands.append(AppProcess("grpc", processes.grpc().argv()))
    return commands


def port_owner(port: int) -> str:
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            listening = conn.status == psutil.CONN_LISTEN and conn.pid
            if listening and conn.laddr and conn.laddr.port == port:
                proc = psutil.Process(conn.pid)
                return f" by pid {conn.pid} ({' '.join(proc.cmdline())[:100]})"
    return ""


def check_listen_ports(env: dict[str, str]) -> None:
    """Fail before starting anything rather than after a minute of start-up."""
    shape = topology(env)
    wanted = [("PORT", shape.host, str(shape.port))]
    if shape.web_instances > 1:
        wanted += [("WEB_INTERNAL_PORT", "127.0.0.1", str(port)) for port in shape.web_ports]
    if GRPC_COMMAND.exists():
        grpc_host = env.get("GRPC_HOST") or env.get("HOST") or "127.0.0.1"
        wanted.append(("GRPC_PORT", grpc_host, env.get("GRPC_PORT") or "50051"))
    for var, host, raw in wanted:
        try:
            port = int(raw)
        except ValueError:
            raise LaunchError(f"{var} must be a port number, got {raw!r}") from None
        if not embedded.port_is_free(port, host):
            raise LaunchError(
                f"cannot listen on {host}:{port}: in use{port_owner(port)}; set {var}=<free port>"
            )


# --- modes ---------------------------------------------------------------------------------


def supervise(
    children: list[Child],
    backing: Backing,
    signals: Signals,
    restart: Callable[[Child], Child | None] = lambda dead: None,
) -> int:
    code = 0
    server_restarts: dict[str, list[float]] = {}
    while True:
        if signals.requested:
            log.info("%s: stopping (again to force)", signals.first_name())
            break
        dead = next((c for c in children if c.proc.poll() is not None), None)
        if dead is not None:
            replacement = restart(dead)
            if replacement is not None:
                children[children.index(dead)] = replacement
                continue
            log.error(
                "%s exited unexpectedly with %s", dead.name, describe_exit(dead.proc.returncode)
            )
            code = 1
            break
        server = backing.dead_server()
        if server is not None:
            # An embedded PostgreSQL or Valkey that died is started again (same data, same
            # port); the app processes ride out the outage as they do an external one's.
            if backing.restart_server(server, signals, server_restarts):
                continue
            log.error("%s is down; see %s", server.name, server.log_path)
            code = 1
            break
        signals.wait(0.25)
    stop_children(children, signals)
    return code


def cmd_run(console: Console, signals: Signals) -> int:
    # Bad values stop the run now, not when they are first needed (at Ctrl-C, say).
    stop_timeout()
    topology(dict(os.environ))
    data_dir = data_root()
    preflight = functools.partial(check_listen_ports, dict(os.environ))
    urls = external_urls()
    with backing_services(
        data_dir, signals, urls, always_lock=True, preflight=preflight
    ) as backing:
        env = child_env(backing, data_dir)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(data_dir))
        setup_database(console, env, signals)
        children: list[Child] = []
        host, port = env.get("HOST") or "127.0.0.1", env.get("PORT") or "8000"
        try:
            for spec in app_commands(env, data_dir):
                wait_until_ready(spec.wait_for, children, signals)
                children.append(start_app_process(console, spec, env))
            # "started" means the front (nginx, or the one web instance) takes connections.
            # Logged as soon as nginx was spawned, the line came before it had bound its
            # port, and a client that took it at its word was refused (a test's first
            # request through nginx was, under CI's load). A TCP connect, not /readyz:
            # that would need this address in ALLOWED_HOSTS.
            wait_until_listening(loopback_of(host), int(port), children, signals)
        except BaseException:
            stop_children(children, signals)
            raise
        log.info("started %s; http://%s:%s/", ", ".join(c.name for c in children), host, port)
        code = supervise(
            children,
            backing,
            signals,
            restart=functools.partial(restart_if_allowed, console, env=env),
        )
    if code == 0:
        log.info("stopped (forced)" if signals.forced else "stopped cleanly")
    else:
        log.error("stopped after a failure (exit %d)", code)
    return code


def fresh_metrics_dir(data_dir: Path) -> Path:
    """Where every app process writes its Prometheus samples, so the web's /metrics sums
    the worker's counters too (docs/metrics.md). Emptied before any process starts: the
    files of an earlier run would otherwise be summed in."""
    metrics_dir = data_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    return metrics_dir


def cmd_test(pytest_args: list[str], signals: Signals) -> int:
    return cmd_exec([python(), "-m", "pytest", *pytest_args], signals)


def cmd_exec(command: list[str], signals: Signals) -> int:
    """Run one command (pytest, the benchmarks) with the backing services' env."""
    data_dir = data_root() / "test"
    with backing_services(data_dir, signals, external_urls(), always_lock=False) as backing:
        env = child_env(backing, data_dir)
        # In the terminal's process group, unlike the app processes: Ctrl-C reaches the
        # command directly (pytest prints its summary) and --pdb can read the terminal.
        proc = processes.spawn(
            command,
            death_signal=signal.SIGTERM,
            own_group=False,
            env=env,
            cwd=PROJECT_DIR,
        )
        forwarded = 0
        while proc.poll() is None:
            # SIGINT from the terminal already reached pytest; forward the others (kill).
            others = [s for s in signals.received if s != signal.SIGINT]
            if len(others) > forwarded:
                proc.send_signal(signal.SIGTERM)
                forwarded = len(others)
            if len(signals.received) >= 3:
                proc.kill()
            time.sleep(0.1)
        code = proc.returncode
    return 128 - code if code < 0 else code


def cmd_services(signals: Signals) -> int:
    data_dir = data_root()
    if external_urls() is not None:
        log.info("DATABASE_URL and REDIS_URL are set: nothing to start")
        return 0
    with backing_services(data_dir, signals, None, always_lock=True) as backing:
        print(f"export DATABASE_URL={backing.database_url}", flush=True)
        print(f"export REDIS_URL={backing.redis_url}", flush=True)
        log.info("running; Ctrl-C stops them (the same lines are in %s)", data_dir / "env")
        server_restarts: dict[str, list[float]] = {}
        while not signals.requested:
            server = backing.dead_server()
            if server is not None:
                if backing.restart_server(server, signals, server_restarts):
                    continue
                log.error("%s is down; see %s", server.name, server.log_path)
                return 1
            signals.wait(0.5)
        log.info("%s: stopping", signals.first_name())
    return 0


USAGE = """usage: python -m devserver.launcher run | test [pytest args...] | exec CMD... | services

  run       backing services (embedded unless DATABASE_URL and REDIS_URL are set), migrate,
            then web, worker, beat (and grpc) with prefixed output; Ctrl-C stops all
  test      backing services (embedded ones under <data>/test), then pytest with the args
  exec      the same backing services, then CMD (e.g. the benchmarks)
  services  only the embedded backing services, in the foreground; prints their env
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    mode, rest = args[0], args[1:]
    takes_args = ("test", "exec")
    if (
        mode not in ("run", "test", "exec", "services")
        or (rest and mode not in takes_args)
        or (mode == "exec" and not rest)
    ):
        print(USAGE, end="", file=sys.stderr)
        return 2
    os.chdir(PROJECT_DIR)
    console = Console(sys.stdout)
    log.addHandler(_ConsoleHandler(console))
    log.setLevel(logging.INFO)
    log.propagate = False
    signals = Signals()
    signals.install()
    try:
        if mode == "run":
            return cmd_run(console, signals)
        if mode == "test":
            return cmd_test(rest, signals)
        if mode == "exec":
            return cmd_exec(rest, signals)
        return cmd_services(signals)
    except (EmbeddedError, LaunchError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("%s during start-up: stopped", signals.first_name())
        return 0 if mode == "run" else 2  # 2: pytest's own code for "interrupted"


if __name__ == "__main__":
    sys.exit(main())
