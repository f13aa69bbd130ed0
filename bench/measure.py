"""What a scenario costs the machine: CPU seconds of a process (psutil), of Redis (its own
INFO counters, so no need to find its PID), resident memory and the load average.

CPU per unit of work (ms per delivered event, per request, per task) is the figure that
survives a noisy neighbour best: a busy machine stretches wall time, much less the CPU a
process spends on the same work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil
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


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


@dataclass
class CpuMeter:
    """CPU spent by some processes and by Redis between start() and stop()."""

    pids: dict[str, int]
    redis_url: str
    children: bool = False
    started: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid, children=self.children) for name, pid in self.pids.items()}
        now["redis"] = redis_cpu_seconds(self.redis_url)
        now["wall"] = time.monotonic()
        return now

    def start(self) -> CpuMeter:
        self.started = self._now()
        return self

    def stop(self) -> dict[str, float]:
        end = self._now()
        self.spent = {name: round(end[name] - self.started[name], 3) for name in end}
        return self.spent

    def per(self, name: str, units: int | float, *, scale: float = 1000.0) -> float | None:
        """CPU of `name` per unit of work, in ms by default."""
        if not units:
            return None
        return round(self.spent[name] * scale / units, 3)
