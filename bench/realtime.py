"""Real time at scale, TaskHub's /ws beside the bare reference (bench/ref_ws.py), each
measured by the same client processes (bench/loadgen.py) and the same publishers
(bench/publishers.py):

- sockets: open N at once (1k/5k/10k): connect rate, errors, KiB of server RSS per
  socket, server CPU per connect and while idle with them open;
- delivery: N sockets, events/s published from separate processes: lost, latency
  percentiles, server and Redis CPU per delivered event;
- publish rate: one process as fast as it can, single and batched;
- reconnect storm: drop every socket at once while events keep flowing; all back, none
  lost, none twice, time until all are caught up.

Every server is a fresh process for each step (restart()), so what one step left behind
does not count against the next. Everything is bounded: each connect phase and each wait
has a deadline, and what did not finish in time is reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Clients
from bench.measure import CpuMeter, load_1m, rss_bytes
from bench.publishers import Publishers
from bench.stats import percentile, summary

MS = 1000.0
KIB = 1024


@dataclass
class Target:
    """One server under test, as the client processes and publishers see it."""

    name: str  # "project" or "reference"
    template: str  # ws URL with {token}
    origin: str
    restart: Callable[[], int]  # starts a fresh server process, returns its PID
    redis_url: str
    log_tail: Callable[[], list[str]]  # the server's last output lines, to show failures
    pid: int = 0
    # Whose publishers feed it (bench/publishers.py mode); "" = its own name. The lean
    # socket tier prototype (bench/proto_socket_tier.py) is fed by the project's.
    publish_mode: str = ""
    # Whether its session measures the publish rate (the prototype's publishers are the
    # project's, already measured in the project's session).
    publish_rate: bool = True


# stall_figures: windows of publish time, and how late an event must be to make its
# window a stall (the delivery p99 target).
STALL_WINDOW_S = 0.25
STALL_LATE_MS = 50.0


def latency_figures(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"n": 0}
    ms = [value * MS for value in latencies]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2),
        "within_5s": round(sum(1 for v in ms if v <= 5000) / len(ms), 4),
    }


def lost(published: dict[int, list[int]], received: dict[int, set[int]]) -> int:
    return sum(len(set(ids) - received.get(user, set())) for user, ids in published.items())


# --- sockets ---------------------------------------------------------------------------------


def sockets(
    target: Target,
    clients: Clients,
    users: list[tuple[int, str]],
    *,
    sizes: list[int],
    deadline_s: float,
    concurrency: int,
) -> dict[str, Any]:
    """For each size, a fresh server: open that many sockets at once (at most
    `concurrency` handshakes in flight), hold them, close them."""
    out: dict[str, Any] = {}
    for size in sizes:
        target.pid = target.restart()
        time.sleep(1)
        rss_before = rss_bytes(target.pid)
        meter = CpuMeter({"server": target.pid}, target.redis_url).start()
        opened = clients.open(
            users[:size],
            template=target.template,
            origin=target.origin,
            concurrency=concurrency,
            timeout=10,
            deadline_s=deadline_s,
        )
        meter.stop()
        time.sleep(1)
        rss_open = rss_bytes(target.pid)
        # Idle with every socket open: nothing is sent, so this is housekeeping alone.
        idle = CpuMeter({"server": target.pid}, target.redis_url).start()
        time.sleep(3)
        idle.stop()
        still_open = clients.collect()["open"]
        closed = clients.close()
        connected = opened["connected"]
        out[str(size)] = {
            "asked": size,
            "attempted": opened["attempted"],
            "connected": connected,
            "still_open_after_idle": still_open,
            "errors": opened["errors"],
            "seconds": round(opened["seconds"], 2),
            "connects_per_s": round(opened["rate"], 1) if opened["rate"] else None,
            "connect_ms": summary(opened["connect_s"], scale=MS),
            "connect_p99_ms": round(percentile([v * MS for v in opened["connect_s"]], 99), 1)
            if opened["connect_s"]
            else None,
            "rss_before_mib": round(rss_before / KIB / KIB, 1),
            "rss_open_mib": round(rss_open / KIB / KIB, 1),
            "kib_per_socket": round((rss_open - rss_before) / KIB / connected, 1)
            if connected
            else None,
            "server_cpu_ms_per_connect": meter.per("server", connected),
            **meter.postgres_per(connected, "connect"),
            "idle_cpu_percent": round(100 * idle.spent["server"] / idle.spent["wall"], 1),
            "close_all_s": round(closed["seconds"], 2),
            **({"server_log_tail": target.log_tail()} if opened["errors"] else {}),
            "load_1m": load_1m(),
        }
    return out


# --- delivery, publish rate and the storm: one session of open sockets --------------------


def stall_figures(sent_at: list[float], latencies: list[float]) -> dict[str, Any]:
    """How often delivery stalls: the events bucketed by the moment they were published,
    in windows of STALL_WINDOW_S; a window in which any event took longer than
    STALL_LATE_MS is a stall. A p99 says how late the worst events were, this says how
    often that happened (one long pause a minute and a pause every second can share a
    p99). Latencies of the same stall share a window, so a pause counts about once."""
    if not latencies:
        return {"windows": 0}
    worst: dict[int, float] = {}
    for sent, latency in zip(sent_at, latencies, strict=True):
        window = int(sent // STALL_WINDOW_S)
        if latency > worst.get(window, -1.0):
            worst[window] = latency
    late = [ms for ms in (v * MS for v in worst.values()) if ms > STALL_LATE_MS]
    return {
        "window_ms": STALL_WINDOW_S * MS,
        "late_ms": STALL_LATE_MS,
        "windows": len(worst),
        "stalled_windows": len(late),
        "stalled_share": round(len(late) / len(worst), 4),
    }


def _drain(
    clients: Clients,
    published: dict[int, list[int]],
    grace: float,
    latencies: list[float],
    arrivals: list[Any],
    sent_at: list[float] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Collect until every published id has arrived or `grace` seconds have passed."""
    deadline = time.monotonic() + grace
    while True:
        seen = clients.collect(ids=True)
        latencies.extend(seen["latencies"])
        arrivals.extend(seen["arrivals"])
        if sent_at is not None:
            sent_at.extend(seen["sent_at"])
        missing = lost(published, seen["ids"])
        if not missing or time.monotonic() > deadline:
            return missing, seen
        time.sleep(0.5)


def session(
    target: Target,
    clients: Clients,
    users: list[tuple[int, str]],
    *,
    sockets_n: int,
    rate: float,
    seconds: float,
    publishers: int,
    storm_rate: float,
    storm_seconds: float,
    rate_seconds: float,
    batch: int,
    connect_deadline_s: float,
    concurrency: int,
) -> dict[str, Any]:
    target.pid = target.restart()
    time.sleep(1)
    opened = clients.open(
        users[:sockets_n],
        template=target.template,
        origin=target.origin,
        concurrency=concurrency,
        timeout=10,
        deadline_s=connect_deadline_s,
    )
    connected_users = sorted(clients.collect(ids=True)["ids"])
    result: dict[str, Any] = {
        "sockets_asked": sockets_n,
        "sockets_connected": opened["connected"],
        "connect_errors": opened["errors"],
    }
    if opened["errors"]:
        result["server_log_tail"] = target.log_tail()
    if not connected_users:
        result["error"] = f"no socket connected: {opened['errors']}"
        return result
    mode = target.publish_mode or target.name
    try:
        result["delivery"] = _delivery(
            target,
            clients,
            connected_users,
            mode=mode,
            rate=rate,
            seconds=seconds,
            publishers=publishers,
        )
        if target.publish_rate:
            result["publish_rate"] = _publish_rate(
                target, clients, connected_users, mode=mode, seconds=rate_seconds, batch=batch
            )
        if target.name == "project":  # the same rows and frames without Django's database layer
            result["publish_rate_lean"] = _publish_rate(
                target, clients, connected_users, mode="lean", seconds=rate_seconds, batch=batch
            )
        result["storm"] = _storm(
            target,
            clients,
            connected_users,
            mode=mode,
            rate=storm_rate,
            seconds=storm_seconds,
            publishers=publishers,
            deadline_s=connect_deadline_s,
            concurrency=concurrency,
        )
    finally:
        clients.close()
    return result


def _delivery(
    target: Target,
    clients: Clients,
    users: list[int],
    *,
    mode: str,
    rate: float,
    seconds: float,
    publishers: int,
) -> dict[str, Any]:
    pubs = Publishers(mode, users, publishers, target.redis_url)
    try:
        clients.collect()  # forget what came before
        client_cpu = clients.cpu_seconds()
        meter = CpuMeter({"server": target.pid}, target.redis_url).start()
        pubs.go(rate=rate, seconds=seconds, max_events=int(rate * seconds))
        done = pubs.result(timeout=seconds + 120)
    finally:
        pubs.stop()
    latencies: list[float] = []
    sent_at: list[float] = []
    missing, seen = _drain(clients, done["ids"], 10.0, latencies, [], sent_at)
    meter.stop()
    delivered = done["published"] - missing
    return {
        "users": len(users),
        "asked_rate": rate,
        "seconds": round(done["seconds"], 1),
        "published": done["published"],
        "published_per_s": round(done["rate"], 1) if done["rate"] else None,
        "publish_errors": done["errors"],
        "lost": missing,
        "duplicates": seen["duplicates"],
        "out_of_order": seen["out_of_order"],
        "foreign_frames": seen["foreign"],
        "latency_ms": latency_figures(latencies),
        "stalls": stall_figures(sent_at, latencies),
        "server_cpu_ms_per_event": meter.per("server", delivered),
        "redis_cpu_ms_per_event": meter.per("redis", delivered),
        **meter.postgres_per(delivered, "event"),
        "server_cpu_percent": round(100 * meter.spent["server"] / meter.spent["wall"], 1),
        "publisher_cpu_ms_per_event": round(done["cpu"] * MS / done["published"], 3)
        if done["published"]
        else None,
        "client_cpu_percent": round(
            100 * (clients.cpu_seconds() - client_cpu) / meter.spent["wall"], 1
        ),
        "unexpected_closes": seen["unexpected_closes"],
        "load_1m": load_1m(),
    }


def _publish_rate(
    target: Target, clients: Clients, users: list[int], *, mode: str, seconds: float, batch: int
) -> dict[str, Any]:
    """One publisher process, unpaced; the sockets stay open so pushes have listeners."""
    out: dict[str, Any] = {}
    for label, size in (("single", 1), (f"batch_{batch}", batch)):
        pubs = Publishers(mode, users, 1, target.redis_url)
        try:
            pubs.go(rate=0, seconds=seconds, max_events=10**7, batch=size)
            done = pubs.result(timeout=seconds + 120)
        finally:
            pubs.stop()
        latencies: list[float] = []
        missing, _ = _drain(clients, done["ids"], 10.0, latencies, [])
        out[label] = {
            "published": done["published"],
            "events_per_s": round(done["rate"], 1) if done["rate"] else None,
            "cpu_ms_per_event": round(done["cpu"] * MS / done["published"], 3)
            if done["published"]
            else None,
            "call_ms": summary(done["call_s"], scale=MS),
            "lost": missing,
            "errors": done["errors"],
        }
    return out


def _storm(
    target: Target,
    clients: Clients,
    users: list[int],
    *,
    mode: str,
    rate: float,
    seconds: float,
    publishers: int,
    deadline_s: float,
    concurrency: int,
) -> dict[str, Any]:
    """Publish for `seconds`; 2 s in, drop every socket at once and let them reconnect,
    spread over the first second or one second per 1,000 sockets, whichever is longer."""
    pubs = Publishers(mode, users, publishers, target.redis_url)
    try:
        clients.collect()
        before = clients.collect()
        pubs.go(rate=rate, seconds=seconds, max_events=int(rate * seconds))
        time.sleep(min(2.0, seconds / 4))
        storm = clients.storm(
            template=target.template,
            origin=target.origin,
            timeout=10,
            first_spread=max(1.0, len(users) / 1000),
            base=0.5,
            cap=8.0,
            attempts=12,
            deadline_s=deadline_s,
            concurrency=concurrency,
        )
        done = pubs.result(timeout=seconds + deadline_s + 120)
    finally:
        pubs.stop()
    latencies: list[float] = []
    arrivals: list[Any] = []
    missing, seen = _drain(clients, done["ids"], 15.0, latencies, arrivals)
    dropped_at = storm["dropped_at"]
    # A socket is caught up once every event published before its new welcome has
    # arrived (what it missed while away, replayed); all caught up = the last of those.
    caught_up: dict[int, float] = {}
    for user_id, _event_id, sent, arrived in arrivals:
        welcome = seen["welcome_at"].get(user_id, 0.0)
        if arrived >= dropped_at and sent < welcome:
            caught_up[user_id] = max(caught_up.get(user_id, 0.0), arrived)
    for user_id, welcome in seen["welcome_at"].items():
        if welcome >= dropped_at:
            caught_up[user_id] = max(caught_up.get(user_id, 0.0), welcome)
    back_s = storm["back_s"]
    return {
        "dropped": storm["dropped"],
        "back": storm["back"],
        "reconnect_errors": storm["errors"],
        "all_back_s": round(max(back_s), 2) if back_s else None,
        "back_p50_s": round(percentile(back_s, 50), 2) if back_s else None,
        "attempts_p50_max": [percentile(storm["tries"], 50), max(storm["tries"])]
        if storm["tries"]
        else None,
        "published": done["published"],
        "published_per_s": round(done["rate"], 1) if done["rate"] else None,
        "lost": missing,
        "duplicates": seen["duplicates"] - before["duplicates"],
        "out_of_order": seen["out_of_order"] - before["out_of_order"],
        "all_caught_up_s": round(max(caught_up.values()) - dropped_at, 2)
        if caught_up and storm["back"] == storm["dropped"] and not missing
        else None,
        "latency_ms": latency_figures(latencies),
        "load_1m": load_1m(),
    }
