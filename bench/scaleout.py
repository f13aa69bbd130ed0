"""Scale-out: the delivery and REST create scenarios against 1 web instance and against 2
behind nginx, in one invocation, and the factor between them (2 instances / 1).

The web tier is started from the launcher's own process table (devserver.launcher's
app_commands, with WEB_INSTANCES=1 or 2 in its environment): the same Daphne command
lines, instance names and nginx configuration (devserver/nginx.py around
deploy/nginx/proxy.conf) that `WEB_INSTANCES=2 make run` starts, so the topology measured
is the shipped one. Only the web tier changes between the two runs: the worker and beat
are the bench stack's, PostgreSQL and Redis are the same servers.

For each topology, in order: start the web tier, wait until every instance and the front
answer /readyz with 200, open the sockets through the front, publish at a fixed rate from
the publisher processes for a fixed time (bench/publishers.py: publish() as a worker calls
it), wait for stragglers, close the sockets, run wrk against POST /api/tasks/ (the worker
not consuming, as in bench/rest.py), stop the web tier. Every wait has a deadline.
"""

from __future__ import annotations

import sys
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil

from bench import drain, realtime, rest
from bench.loadgen import Clients
from bench.measure import CpuMeter, load_1m
from bench.publishers import Publishers
from bench.stack import BenchError, Stack

MS = 1000.0


@dataclass
class Sizes:
    sockets: int
    rate: float  # events/s asked of the publishers
    seconds: float  # how long they publish
    connect_deadline: float
    wrk_seconds: int
    wrk_connections: int
    latency_bound_ms: float  # "delivered within the bound" counts events at most this late
    batch: int  # events per publish transaction
    sockets_per_user: int  # every event goes to this many sockets


# The default and --quick differ only in size. The default is the measured run (about 3
# minutes for both topologies). Publishing runs on the same two cores as the web tier and
# costs more than pushing: per event, the publisher and PostgreSQL spend about 3x what
# Daphne spends sending it to one socket (the first runs: 0.4-0.5 + 0.3-0.4 ms against
# 0.25-0.3 ms). With one socket per event the publishers saturate the machine long
# before one Daphne is busy, and the factor would measure them. So that the web tier is
# the part under load, as it is when it scales out:
# - every user has 4 sockets open (a few tabs or devices; the per-user cap is 20), so
#   each event is 4 deliveries;
# - publishers commit 10 events per transaction (publish() ten times in one atomic
#   block, as a worker that emits several events does).
DEFAULT = Sizes(1000, 800, 20, 30, 15, 32, 5000, 10, 4)
QUICK = Sizes(100, 100, 3, 20, 3, 32, 5000, 10, 2)


def _consecutive_free(count: int, attempts: int = 20) -> int:
    """A port P with P..P+count-1 all free (the launcher puts instances on PORT+1...)."""
    from devserver.embedded import port_is_free
    from devserver.testing import free_port

    for _ in range(attempts):
        port = free_port()
        if port + count < 65536 and all(port_is_free(port + i) for i in range(count)):
            return port
    raise BenchError(f"no {count} consecutive free ports found in {attempts} tries")


class WebTier:
    """WEB_INSTANCES Daphne processes (and nginx when more than one), as the launcher
    starts them, registered in the stack so that its stop() ends them whatever happens."""

    def __init__(self, stack: Stack, instances: int) -> None:
        from devserver import launcher

        self.stack = stack
        self.instances = instances
        port = _consecutive_free(instances + 1 if instances > 1 else 1)
        env = dict(
            stack.env,
            WEB_INSTANCES=str(instances),
            HOST="127.0.0.1",
            PORT=str(port),
        )
        # The instances on PORT+1.. (checked free above), wherever a user's env points.
        env.pop("WEB_INTERNAL_PORT", None)
        shape = launcher.topology(env)
        expected = [port] if instances == 1 else [port + 1 + i for i in range(instances)]
        if shape.web_ports != expected:
            raise BenchError(f"the launcher put the instances on {shape.web_ports}, not {expected}")
        self.env = env
        self.base_url = f"http://127.0.0.1:{port}"
        self.instance_ports = shape.web_ports
        data_dir = stack.tmp / f"web_tier_{instances}"
        # Only the web tier: the worker and beat are the stack's (one set per broker DB).
        self.specs = [
            spec
            for spec in launcher.app_commands(env, data_dir)
            if spec.name == "nginx" or spec.name.startswith("web")
        ]
        self.names: list[str] = []

    def start(self, timeout: float = 90.0) -> None:
        for spec in self.specs:
            for url in spec.wait_for:
                self._wait_ready(url, timeout)
            name = f"scaleout_{spec.name}"
            self.stack.start_extra(name, spec.args, env={**self.env, **spec.env})
            self.names.append(name)
        for port in self.instance_ports:
            self._wait_ready(f"http://127.0.0.1:{port}/readyz", timeout)
        self._wait_ready(f"{self.base_url}/readyz", timeout)

    def _wait_ready(self, url: str, timeout: float) -> None:
        """Until `url` answers 200, as the launcher waits before starting nginx."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for name in self.names:
                process = self.stack.processes[name]
                if process.proc.poll() is not None:
                    raise BenchError(f"{name} exited:\n{process.output[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        tails = "\n".join(
            f"--- {name}\n" + "\n".join(self.stack.processes[name].lines[-15:])
            for name in self.names
        )
        raise BenchError(f"{url} did not answer 200 within {timeout:.0f} s ({last})\n{tails}")

    @property
    def pids(self) -> dict[str, int]:
        """web, or web1, web2 and nginx: the processes that serve the front port."""
        return {
            name.removeprefix("scaleout_"): self.stack.processes[name].proc.pid
            for name in self.names
        }

    def sockets_per_instance(self) -> dict[str, int]:
        """Established TCP connections on each instance's own port (its clients: the
        sockets themselves with one instance, nginx's upstream connections with more)."""
        out: dict[str, int] = {}
        for (name, pid), port in zip(
            ((n, p) for n, p in self.pids.items() if n != "nginx"),
            self.instance_ports,
            strict=True,
        ):
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            out[name] = sum(
                1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            )
        return out

    def stop(self) -> None:
        for name in reversed(self.names):
            self.stack.stop_extra(name)
        self.names.clear()


def _server_cpu(meter: CpuMeter, pids: dict[str, int]) -> dict[str, float]:
    return {name: meter.spent[name] for name in pids}


class Groups:
    """`sockets_per_user` client sets (bench/loadgen.py), each holding one socket of every
    user: k sockets per user, as a user with a few tabs or devices open."""

    def __init__(self, count: int, processes: int) -> None:
        self.groups: list[Clients] = []
        try:
            for _ in range(count):
                self.groups.append(Clients(processes))
        except BaseException:
            self.stop()
            raise

    def cpu_seconds(self) -> float:
        return sum(group.cpu_seconds() for group in self.groups)

    def close(self) -> None:
        for group in self.groups:
            group.close()

    def stop(self) -> None:
        for group in self.groups:
            group.stop()

    def drain(
        self, published: dict[int, list[int]], grace: float
    ) -> tuple[int, list[float], dict[str, Any]]:
        """Collect until every socket has every event of its user, or `grace` s passed:
        (socket deliveries missing, latencies, summed counters)."""
        deadline = time.monotonic() + grace
        latencies: list[float] = []
        while True:
            missing = 0
            counts: dict[str, Any] = {"duplicates": 0, "out_of_order": 0, "foreign": 0}
            closes: dict[str, int] = {}
            for group in self.groups:
                seen = group.collect(ids=True)
                latencies.extend(seen["latencies"])
                missing += realtime.lost(published, seen["ids"])
                for key in ("duplicates", "out_of_order", "foreign"):
                    counts[key] += seen[key]
                for reason, count in seen["unexpected_closes"].items():
                    closes[reason] = closes.get(reason, 0) + count
            counts["unexpected_closes"] = closes
            if not missing or time.monotonic() > deadline:
                return missing, latencies, counts
            time.sleep(0.5)


def _delivery(
    tier: WebTier,
    clients: Groups,
    users: list[tuple[int, str]],
    *,
    sizes: Sizes,
    publishers: int,
    concurrency: int,
    redis_url: str,
) -> dict[str, Any]:
    template = tier.base_url.replace("http://", "ws://") + "/ws?token={token}"
    users = users[: sizes.sockets // sizes.sockets_per_user]
    connected_n = 0
    errors: dict[str, int] = {}
    both: set[int] | None = None
    for group in clients.groups:
        opened = group.open(
            users,
            template=template,
            origin=tier.base_url,
            concurrency=concurrency,
            timeout=10,
            deadline_s=sizes.connect_deadline,
        )
        connected_n += opened["connected"]
        for reason, count in opened["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
        mine = set(group.collect(ids=True)["ids"])
        both = mine if both is None else both & mine
    # Events only for users whose every socket connected: each must reach all k of them.
    connected = sorted(both or ())
    out: dict[str, Any] = {
        "sockets_asked": len(users) * sizes.sockets_per_user,
        "sockets_per_user": sizes.sockets_per_user,
        "sockets_connected": connected_n,
        "connect_errors": errors,
        "connections_per_instance": tier.sockets_per_instance(),
    }
    if not connected:
        raise BenchError(f"no user has every socket connected: {errors}")
    pids = tier.pids
    pubs = Publishers("project", connected, publishers, redis_url)
    try:
        for group in clients.groups:
            group.collect()  # forget the welcomes
        client_cpu = clients.cpu_seconds()
        meter = CpuMeter(pids, redis_url, children=True).start()
        pubs.go(
            rate=sizes.rate,  # events/s: the schedule counts events, not calls
            seconds=sizes.seconds,
            max_events=int(sizes.rate * sizes.seconds),
            batch=sizes.batch,
        )
        done = pubs.result(timeout=sizes.seconds + 120)
    finally:
        pubs.stop()
    missing, latencies, seen = clients.drain(done["ids"], 10.0)
    meter.stop()
    # A delivery = one event reaching one socket; each event has sockets_per_user of them.
    deliveries = done["published"] * sizes.sockets_per_user - missing
    bound_s = sizes.latency_bound_ms / MS
    in_bound = sum(1 for value in latencies if value <= bound_s)
    server = sum(_server_cpu(meter, pids).values())
    wall = meter.spent["wall"]
    seconds = done["seconds"]
    out.update(
        {
            "asked_rate": sizes.rate,
            "batch": sizes.batch,
            "seconds": round(seconds, 1),
            "published": done["published"],
            "published_per_s": round(done["rate"], 1) if done["rate"] else None,
            "publish_errors": done["errors"],
            "lost": missing,
            "duplicates": seen["duplicates"],
            "out_of_order": seen["out_of_order"],
            "foreign_frames": seen["foreign"],
            "latency_ms": realtime.latency_figures(latencies),
            "latency_bound_ms": sizes.latency_bound_ms,
            # Over the publishing time: what reached its sockets in time per second of load.
            "deliveries_in_bound_per_s": round(in_bound / seconds, 1) if seconds else None,
            "events_in_bound_per_s": round(in_bound / sizes.sockets_per_user / seconds, 1)
            if seconds
            else None,
            "server_cpu_ms_per_delivery": round(server * MS / deliveries, 3)
            if deliveries
            else None,
            "server_cpu_percent": round(100 * server / wall, 1),
            "cpu_s": _server_cpu(meter, pids),
            "redis_cpu_ms_per_delivery": meter.per("redis", deliveries),
            **meter.postgres_per(done["published"], "event"),
            "publisher_cpu_ms_per_event": round(done["cpu"] * MS / done["published"], 3)
            if done["published"]
            else None,
            "client_cpu_percent": round(100 * (clients.cpu_seconds() - client_cpu) / wall, 1),
            "unexpected_closes": seen["unexpected_closes"],
            "load_1m": load_1m(),
        }
    )
    return out


def _rest(
    tier: WebTier, stack: Stack, *, sizes: Sizes, token: str, redis_url: str
) -> dict[str, Any]:
    from bench.scale import _cancel_created_since
    from taskhub.celery import app

    node = drain.node_name(stack.node)
    queues = ["celery", "dispatch"]
    started = time.time()
    drain.set_consuming(app, node, queues, on=False)
    try:
        return rest.run_wrk(
            f"{tier.base_url}/api/tasks/",
            token=token,
            body='{"title":"bench wrk scale-out","kind":"echo"}',
            connections=sizes.wrk_connections,
            threads=2,
            seconds=sizes.wrk_seconds,
            server_pids=tier.pids,
            redis_url=redis_url,
        )
    finally:
        _cancel_created_since(started)
        app.control.purge()
        drain.set_consuming(app, node, queues, on=True)


def _factor(two: Any, one: Any) -> float | None:
    if not isinstance(two, int | float) or not isinstance(one, int | float) or not one:
        return None
    return round(two / one, 2)


FACTORS = {
    "events_in_bound_per_s": ("delivery", "events_in_bound_per_s"),
    "deliveries_in_bound_per_s": ("delivery", "deliveries_in_bound_per_s"),
    "delivery_p50_ms": ("delivery", "latency_ms", "p50"),
    "delivery_p99_ms": ("delivery", "latency_ms", "p99"),
    "rest_req_per_s": ("rest", "req_per_s"),
    "rest_p99_ms": ("rest", "p99_ms"),
    "server_cpu_ms_per_delivery": ("delivery", "server_cpu_ms_per_delivery"),
    "server_cpu_ms_per_req": ("rest", "server_cpu_ms_per_req"),
}


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _one_topology(
    stack: Stack,
    instances: int,
    *,
    sizes: Sizes,
    users: list[tuple[int, str]],
    token: str,
    clients_n: int,
    publishers_n: int,
    concurrency: int,
    redis_url: str,
) -> dict[str, Any]:
    print(f"bench: scale-out, {instances} web instance(s) ...", file=sys.stderr, flush=True)
    part: dict[str, Any] = {}
    tier = WebTier(stack, instances)
    try:
        tier.start()
        part["front"] = tier.base_url
        part["processes"] = [spec.name for spec in tier.specs]
        time.sleep(1)  # let the fresh processes settle before the clock starts
        # k groups of sockets; the client processes split between them (at least one each).
        clients = Groups(sizes.sockets_per_user, max(1, clients_n // sizes.sockets_per_user))
        try:
            part["delivery"] = _delivery(
                tier,
                clients,
                users,
                sizes=sizes,
                publishers=publishers_n,
                concurrency=concurrency,
                redis_url=redis_url,
            )
            clients.close()
        except Exception as exc:  # the REST figure is still worth having
            traceback.print_exc(file=sys.stderr)
            part["delivery"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            clients.stop()
        time.sleep(1)
        try:
            part["rest"] = _rest(tier, stack, sizes=sizes, token=token, redis_url=redis_url)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            part["rest"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if any("error" in v for v in part.values() if isinstance(v, dict)):
            part["log_tail"] = {
                name: lines
                for name, lines in stack.outputs(tail=15).items()
                if name.startswith("scaleout_")
            }
        tier.stop()
    return part


def run(
    stack: Stack,
    *,
    sizes: Sizes,
    users: list[tuple[int, str]],
    token: str,
    clients_n: int,
    publishers_n: int,
    concurrency: int,
    redis_url: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": vars(sizes)}
    for instances in (1, 2):
        started = time.monotonic()
        try:
            out[str(instances)] = _one_topology(
                stack,
                instances,
                sizes=sizes,
                users=users,
                token=token,
                clients_n=clients_n,
                publishers_n=publishers_n,
                concurrency=concurrency,
                redis_url=redis_url,
            )
        except Exception as exc:  # the other topology's figures are still worth having
            traceback.print_exc(file=sys.stderr)
            out[str(instances)] = {"error": f"{type(exc).__name__}: {exc}"}
        out[str(instances)]["seconds"] = round(time.monotonic() - started, 1)
    out["factor"] = {
        name: _factor(_get(out, "2", *path), _get(out, "1", *path))
        for name, path in FACTORS.items()
    }
    errors = [
        f"{n} instance(s) {what}: {out[n][what]['error']}"
        for n in ("1", "2")
        for what in ("delivery", "rest")
        if "error" in (out[n].get(what) or {})
    ] + [f"{n} instance(s): {out[n]['error']}" for n in ("1", "2") if "error" in out[n]]
    if errors:
        out["error"] = "; ".join(errors)
    return out
