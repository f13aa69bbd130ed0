"""What a scenario costs the machine: CPU seconds of a process (psutil), of Redis (its own
INFO counters, so no need to find its PID), of PostgreSQL (psutil over its processes),
resident memory and the load average.

CPU per unit of work (ms per delivered event, per request, per task) is the figure that
survives a noisy neighbour best: a busy machine stretches wall time, much less the CPU a
process spends on the same work.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import psutil
import psycopg
import redis


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process (and its live children: a Celery pool), 0 if gone."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system
        if children:
            for child in process.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += child_times.user + child_times.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def rss_bytes(pid: int, *, samples: int = 5, interval: float = 0.1) -> int:
    """Median resident set size over a few samples (RSS moves in pages and arenas)."""
    process = psutil.Process(pid)
    values = []
    for _ in range(samples):
        values.append(process.memory_info().rss)
        time.sleep(interval)
    return sorted(values)[len(values) // 2]


def redis_cpu_seconds(url: str) -> float:
    """Redis's own used_cpu_user + used_cpu_sys (the whole server, all its databases)."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class PostgresCpu:
    """The CPU of the PostgreSQL server behind a DATABASE_URL on this machine.

    Worker or Daphne CPU alone hides what their sessions cost the database: the backend
    that parses, plans and runs every statement, the WAL writer that flushes each commit.
    Two figures, because the server may be shared (the machine's own PostgreSQL serves other
    databases too):

    - `whole_server()`: the postmaster and every process under it. The postmaster reaps
      its backends, so their CPU stays in its children's counters after they exit: the
      difference between two readings is exact. It includes other databases' load.
    - `sampler()`: only the backends of our database (their process title names it),
      sampled every half second, so a backend that exits between two samples loses at
      most half a second of its CPU. It excludes the shared writer processes.

    On a quiet machine the first is the one to read; on a shared one, the second.
    """

    def __init__(self, database_url: str) -> None:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_backend_pid(), current_database()").fetchone()
            assert row is not None
            backend, self.database = row
            # Our session's backend is a child of the postmaster (the runner has checked
            # the server is on this machine); asked while the session, so the backend, lives.
            self.postmaster = psutil.Process(psutil.Process(backend).ppid())

    def whole_server(self) -> float:
        try:
            times = self.postmaster.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            children = self.postmaster.children()
        except psutil.Error:
            return 0.0
        for child in children:
            try:
                child_times = child.cpu_times()
            except psutil.Error:
                continue
            total += child_times.user + child_times.system
        return total

    def database_backends(self) -> dict[int, float]:
        """CPU seconds of each live backend of our database, by PID."""
        out: dict[int, float] = {}
        marker = f" {self.database} "
        try:
            children = self.postmaster.children()
        except psutil.Error:
            return out
        for child in children:
            try:
                title = " ".join(child.cmdline())
                if marker not in f" {title} ":
                    continue
                times = child.cpu_times()
            except psutil.Error:
                continue
            out[child.pid] = times.user + times.system
        return out

    def sampler(self, interval: float = 0.5) -> BackendSampler:
        return BackendSampler(self, interval)


class BackendSampler:
    """CPU of our database's backends between start() and stop(), sampled in a thread."""

    def __init__(self, source: PostgresCpu, interval: float) -> None:
        self.source = source
        self.interval = interval
        self.baseline: dict[int, float] = {}
        self.latest: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pg-cpu-sampler", daemon=True)

    def _sample(self) -> None:
        for pid, seconds in self.source.database_backends().items():
            self.latest[pid] = seconds

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> BackendSampler:
        self.baseline = self.source.database_backends()
        self.latest = dict(self.baseline)
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        # A backend first seen after start() was born since: all of its CPU counts. (A PID
        # reused within one run would be a new backend seen as an old one; harmless at
        # these counts.)
        return sum(value - self.baseline.get(pid, 0.0) for pid, value in self.latest.items())


# Set once by the runner (track_postgres); every CpuMeter then counts PostgreSQL too.
_postgres: PostgresCpu | None = None


def track_postgres(database_url: str) -> str | None:
    """Count PostgreSQL's CPU in every meter from now on; a reason when it cannot."""
    global _postgres
    try:
        _postgres = PostgresCpu(database_url)
    except (psycopg.Error, psutil.Error) as exc:
        _postgres = None
        return f"{type(exc).__name__}: {exc}"
    return None


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


@dataclass
class CpuMeter:
    """CPU spent by some processes, by Redis and (once track_postgres() was called) by
    PostgreSQL between start() and stop(): `postgres` is the whole server, `postgres_db`
    the backends of the bench database (PostgresCpu says why both)."""

    pids: dict[str, int]
    redis_url: str
    children: bool = False
    started: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    _sampler: BackendSampler | None = None

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid, children=self.children) for name, pid in self.pids.items()}
        now["redis"] = redis_cpu_seconds(self.redis_url)
        if _postgres is not None:
            now["postgres"] = _postgres.whole_server()
        now["wall"] = time.monotonic()
        return now

    def start(self) -> CpuMeter:
        if _postgres is not None:
            self._sampler = _postgres.sampler().start()
        self.started = self._now()
        return self

    def stop(self) -> dict[str, float]:
        end = self._now()
        self.spent = {name: round(end[name] - self.started[name], 3) for name in end}
        if self._sampler is not None:
            self.spent["postgres_db"] = round(self._sampler.stop(), 3)
            self._sampler = None
        return self.spent

    def per(self, name: str, units: int | float, *, scale: float = 1000.0) -> float | None:
        """CPU of `name` per unit of work, in ms by default (None: nothing done, or not
        measured, e.g. PostgreSQL when it could not be found)."""
        if not units or name not in self.spent:
            return None
        return round(self.spent[name] * scale / units, 3)

    def postgres_per(self, units: int | float, unit: str) -> dict[str, float | None]:
        """PostgreSQL's CPU per unit of work, as `postgres_db_cpu_ms_per_<unit>` (the bench
        database's backends) and `postgres_cpu_ms_per_<unit>` (the whole server)."""
        return {
            f"postgres_db_cpu_ms_per_{unit}": self.per("postgres_db", units),
            f"postgres_cpu_ms_per_{unit}": self.per("postgres", units),
        }
