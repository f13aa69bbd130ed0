"""The project beside its references, in one invocation: sockets, delivery, publish rate,
reconnect storm (bench/realtime.py), REST create (bench/rest.py), drain (bench/drain.py)
and search at scale (bench/search_scale.py).

Each part runs the project first and then its reference on the same machine within a
minute or two, so a ratio compares like with like even when the neighbours' load moves.
With `proto` (on with --scale), sockets and realtime also run the lean socket tier
prototype (bench/proto_socket_tier.py) between the two, as a third column; rest and
search also time the lean HTTP path prototype (bench/proto_http.py, served by the
reference's Daphne) and the asyncio HTTP tier prototype (bench/proto_http_tier.py, its own
process), as rows of their own; drain, the batched-runs prototype (bench/proto_drain.py).
Synchronous code (run in a thread by the runner): the client load is in other processes.
"""

from __future__ import annotations

import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import drain, realtime, rest, search_scale
from bench.loadgen import Clients
from bench.stack import BIN_DIR, Stack

PARTS = ("sockets", "realtime", "rest", "drain", "search")


@dataclass
class Sizes:
    """How big each part is; --scale and the default differ only here."""

    socket_steps: list[int]
    socket_deadlines: list[float]
    session_sockets: int
    rate: float
    seconds: float
    storm_rate: float
    storm_seconds: float
    rate_seconds: float
    batch: int
    session_connect_deadline: float
    wrk_seconds: int
    drain_tasks: int
    search_rows: int
    search_owners: int
    search_samples: int
    search_seconds_per_class: float


QUICK = Sizes([100], [20], 50, 50, 3, 50, 4, 1.5, 10, 20, 2, 50, 20_000, 100, 20, 2)
# make bench: under ~3 minutes with the small scenarios, on a busy 2-core machine.
DEFAULT = Sizes([200], [20], 150, 200, 3, 200, 4, 1.5, 20, 20, 3, 100, 20_000, 100, 30, 2)
# --scale: the sizes of docs/benchmarks.md's targets; each connect phase is capped, so a
# slow server costs at most its deadline (and is reported as not all connected).
SCALE = Sizes(
    [1000, 5000, 10000],
    [15, 30, 45],
    5000,
    1000,
    30,
    1000,
    15,
    5,
    20,
    35,
    15,
    2000,
    1_000_000,
    1000,
    200,
    5,
)


def make_users(count: int, run_id: str) -> list[tuple[int, str]]:
    """`count` users inserted in one statement, each with an access token minted here
    (registering them over REST would time the password hasher and hit the sign-up
    throttle)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework_simplejwt.tokens import AccessToken

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO auth_user (password, is_superuser, username, first_name, last_name,
                email, is_staff, is_active, date_joined)
            SELECT '!', false, %s || i, '', '', '', false, true, now()
            FROM generate_series(1, %s::int) AS i
            RETURNING id
            """,
            [f"bench_ws_{run_id}_", count],
        )
        ids = sorted(row[0] for row in cursor.fetchall())
    user_model = get_user_model()
    return [(pk, str(AccessToken.for_user(user_model(pk=pk)))) for pk in ids]


class References:
    """Starts the reference servers on demand, through the stack (so they are stopped
    with it, whatever happens)."""

    def __init__(self, stack: Stack) -> None:
        from devserver.testing import free_port

        self.stack = stack
        self.ws_port = free_port()
        self.proto_port = free_port()
        self.http_tier_port = free_port()
        self.django_port = free_port()
        self.celery_node = f"benchref-{uuid.uuid4().hex[:8]}@%h"

    def restart_ws(self) -> int:
        """The bare websockets reference (bench/ref_ws.py), a fresh process."""
        return self._start_module("ref_ws", "bench.ref_ws", self.ws_port)

    def restart_proto(self) -> int:
        """The lean socket tier prototype (bench/proto_socket_tier.py), a fresh process."""
        return self._start_module("proto_ws", "bench.proto_socket_tier", self.proto_port)

    def start_http_tier(self) -> int:
        """The asyncio HTTP tier prototype (bench/proto_http_tier.py), a fresh process."""
        return self._start_module("proto_http_tier", "bench.proto_http_tier", self.http_tier_port)

    def _start_module(self, name: str, module: str, port: int) -> int:
        """`python -m <module> --port <port>`, ready when it prints "<last part> listening"."""
        process = self.stack.start_extra(
            name,
            [sys.executable, "-m", module, "--port", str(port)],
            ready_text=f"{module.rpartition('.')[2]} listening",
        )
        return process.proc.pid

    def start_django(self) -> int:
        env = dict(self.stack.env, DJANGO_SETTINGS_MODULE="bench.ref_settings")
        process = self.stack.start_extra(
            "ref_django",
            [
                str(BIN_DIR / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(self.django_port),
                "bench.ref_django:application",
            ],
            env=env,
            ready_url=f"http://127.0.0.1:{self.django_port}/ready",
        )
        return process.proc.pid

    def start_proto_drain(self, concurrency: int) -> int:
        """The batched-runs prototype's worker (bench/proto_drain.py)."""
        node = f"benchproto-{uuid.uuid4().hex[:8]}@%h"
        return self._start_worker(
            "proto_drain", "bench.proto_drain", node, drain.PROTO_QUEUE, concurrency
        )

    def start_celery(self, concurrency: int) -> int:
        """The bare-Celery reference's worker (bench/ref_celery.py)."""
        return self._start_worker(
            "ref_celery", "bench.ref_celery", self.celery_node, "bench_ref", concurrency
        )

    def _start_worker(self, name: str, app: str, node: str, queue: str, concurrency: int) -> int:
        """A Celery worker with the project's worker options, on a queue of its own."""
        process = self.stack.start_extra(
            name,
            [
                str(BIN_DIR / "celery"),
                "-A",
                app,
                "worker",
                "-n",
                node,
                "--loglevel=INFO",
                "--concurrency",
                str(concurrency),
                "-Q",
                queue,
                "--without-gossip",
                "--without-mingle",
            ],
            ready_text=" ready.",
        )
        return process.proc.pid


def run(
    stack: Stack,
    *,
    sizes: Sizes,
    only: list[str] | None,
    clients_n: int,
    publishers_n: int,
    concurrency: int,
    owner_id: int,
    token: str,
    run_id: str,
    database_url: str,
    redis_url: str,
    proto: bool = False,
) -> dict[str, Any]:
    """`proto`: the lean socket tier prototype as a third column in sockets and realtime
    (docs/benchmarks.md, "The design that would pass: a lean socket tier"), and in rest and
    search the rows of the lean HTTP path prototype ("The lean HTTP path: the design tried
    for REST create and search") and of the asyncio HTTP tier prototype ("An asyncio HTTP
    tier measured"), and in drain the batched-runs prototype's ("Batched runs: a drain
    prototype measured")."""
    refs = References(stack)
    out: dict[str, Any] = {}
    needs_sockets = not only or {"sockets", "realtime"} & set(only)
    users = (
        make_users(max([*sizes.socket_steps, sizes.session_sockets]), run_id)
        if needs_sockets
        else []
    )
    targets = [
        realtime.Target(
            "project",
            stack.base_url.replace("http://", "ws://") + "/ws?token={token}",
            stack.base_url,
            lambda: (stack.restart_web(), stack.daphne_pid)[1],
            redis_url,
            lambda: stack.outputs(tail=15).get("web", []),
        ),
        realtime.Target(
            "reference",
            f"ws://127.0.0.1:{refs.ws_port}/?token={{token}}",
            stack.base_url,
            refs.restart_ws,
            redis_url,
            lambda: stack.outputs(tail=15).get("ref_ws", []),
        ),
    ]
    if proto:
        # Between the two, so the table reads TaskHub / prototype / reference. Fed by the
        # project's publishers (its events are TaskHub's rows and pushes).
        targets.insert(
            1,
            realtime.Target(
                "prototype",
                f"ws://127.0.0.1:{refs.proto_port}/ws?token={{token}}",
                stack.base_url,
                refs.restart_proto,
                redis_url,
                lambda: stack.outputs(tail=15).get("proto_ws", []),
                publish_mode="project",
                publish_rate=False,
            ),
        )
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []

    def both(part: Callable[[realtime.Target, Clients], dict[str, Any]]) -> dict[str, Any]:
        result = {}
        for target in targets:
            clients = Clients(clients_n)
            try:
                result[target.name] = part(target, clients)
            except Exception as exc:
                if target.name != "prototype":
                    raise
                # A broken prototype must not cost the run TaskHub's and the reference's
                # figures: its column says why instead.
                traceback.print_exc(file=sys.stderr)
                result[target.name] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                clients.stop()
                if target.name == "prototype":  # not left holding PG/Redis connections
                    stack.stop_extra("proto_ws")
        return result

    steps.append(
        (
            "sockets",
            lambda: both(
                lambda target, clients: {
                    str(size): realtime.sockets(
                        target,
                        clients,
                        users,
                        sizes=[size],
                        deadline_s=deadline,
                        concurrency=concurrency,
                    )[str(size)]
                    for size, deadline in zip(
                        sizes.socket_steps, sizes.socket_deadlines, strict=True
                    )
                }
            ),
        )
    )
    steps.append(
        (
            "realtime",
            lambda: both(
                lambda target, clients: realtime.session(
                    target,
                    clients,
                    users,
                    sockets_n=sizes.session_sockets,
                    rate=sizes.rate,
                    seconds=sizes.seconds,
                    publishers=publishers_n,
                    storm_rate=sizes.storm_rate,
                    storm_seconds=sizes.storm_seconds,
                    rate_seconds=sizes.rate_seconds,
                    batch=sizes.batch,
                    connect_deadline_s=sizes.session_connect_deadline,
                    concurrency=concurrency,
                )
            ),
        )
    )
    steps.append(("rest", lambda: _rest(stack, refs, sizes, token, redis_url, proto)))
    steps.append(("drain", lambda: _drain(stack, refs, sizes, owner_id, redis_url, proto)))
    steps.append(
        ("search", lambda: _search(stack, refs, sizes, run_id, database_url, redis_url, proto))
    )

    for name, step in steps:
        if only and name not in only:
            continue
        started = time.monotonic()
        with_proto = proto and name in ("sockets", "realtime", "rest", "drain", "search")
        sides = "project, prototype and reference" if with_proto else "project and reference"
        print(f"bench: {name} ({sides}) ...", file=sys.stderr, flush=True)
        try:
            out[name] = step()
        except Exception as exc:  # one broken part must not hide the others' numbers
            traceback.print_exc(file=sys.stderr)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out.setdefault("seconds", {})[name] = round(time.monotonic() - started, 1)
    return out


def _rest(
    stack: Stack, refs: References, sizes: Sizes, token: str, redis_url: str, proto: bool
) -> dict[str, Any]:
    from taskhub.celery import app

    ref_pid = refs.start_django()
    node = drain.node_name(stack.node)
    queues = ["celery", "dispatch"]
    common = {"connections": 32, "threads": 2, "seconds": sizes.wrk_seconds, "redis_url": redis_url}
    started = time.time()
    drain.set_consuming(app, node, queues, on=False)
    try:
        out = {
            "api": rest.run_wrk(
                f"{stack.base_url}/api/tasks/",
                token=token,
                body='{"title":"bench wrk","kind":"echo"}',
                server_pids={"server": stack.daphne_pid},
                **common,
            ),
            "legacy": rest.run_wrk(
                f"{stack.base_url}/task/create",
                token=None,
                body='{"task":"bench wrk legacy"}',
                server_pids={"server": stack.daphne_pid},
                **common,
            ),
            "reference": rest.run_wrk(
                f"http://127.0.0.1:{refs.django_port}/ref/create",
                token=None,
                body='{"title":"bench wrk ref"}',
                server_pids={"server": ref_pid},
                **common,
            ),
        }
        if proto:
            # The lean HTTP path prototype (bench/proto_http.py), on the reference's server:
            # the same create as POST /api/tasks/, with the same token and body. A broken
            # prototype must not cost the run the product's and the reference's figures.
            try:
                out["prototype"] = rest.run_wrk(
                    f"http://127.0.0.1:{refs.django_port}/proto/tasks/",
                    token=token,
                    body='{"title":"bench wrk","kind":"echo"}',
                    server_pids={"server": ref_pid},
                    **common,
                )
            except Exception as exc:
                out["prototype"] = {"error": f"{type(exc).__name__}: {exc}"}
            # The same work from the asyncio HTTP tier (bench/proto_http_tier.py): no
            # Daphne, no Django handler in front; its own process, stopped after. The
            # reference's server goes first: its idle PostgreSQL sessions add up.
            refs.stack.stop_extra("ref_django")
            try:
                out["tier"] = rest.run_wrk(
                    f"http://127.0.0.1:{refs.http_tier_port}/api/tasks/",
                    token=token,
                    body='{"title":"bench wrk","kind":"echo"}',
                    server_pids={"server": refs.start_http_tier()},
                    **common,
                )
            except Exception as exc:
                out["tier"] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                refs.stack.stop_extra("proto_http_tier")
    finally:
        _cancel_created_since(started)
        app.control.purge()
        drain.set_consuming(app, node, queues, on=True)
        refs.stack.stop_extra("ref_django")
    return out


def _cancel_created_since(started: float) -> None:
    """The wrk runs' tasks must not run later, in some other part's measurement."""
    from datetime import UTC, datetime

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tasks_task SET status = 'cancelled' WHERE status = 'pending' "
            "AND created_at >= %s",
            [datetime.fromtimestamp(started - 1, UTC)],
        )
    connection.close()


def _drain(
    stack: Stack, refs: References, sizes: Sizes, owner_id: int, redis_url: str, proto: bool
) -> dict[str, Any]:
    out = {
        "project": drain.project(
            worker_pid=stack.worker_pid,
            node=drain.node_name(stack.node),
            owner_id=owner_id,
            count=sizes.drain_tasks,
            deadline_s=90,
            redis_url=redis_url,
        )
    }
    if proto:
        # The batched-runs prototype (bench/proto_drain.py), its own worker; a broken
        # prototype must not cost the run the project's and the reference's figures.
        try:
            out["prototype"] = drain.prototype(
                node=drain.node_name(stack.node),
                start_worker=lambda: refs.start_proto_drain(stack.concurrency),
                stop_worker=lambda: stack.stop_extra("proto_drain"),
                owner_id=owner_id,
                count=sizes.drain_tasks,
                deadline_s=90,
                redis_url=redis_url,
            )
        except Exception as exc:
            out["prototype"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            stack.stop_extra("proto_drain")  # a no-op when prototype() stopped it
    pid = refs.start_celery(stack.concurrency)
    try:
        out["reference"] = drain.reference(
            worker_pid=pid,
            node=drain.node_name(refs.celery_node),
            count=sizes.drain_tasks,
            deadline_s=60,
            redis_url=redis_url,
        )
    finally:
        stack.stop_extra("ref_celery")
    return out


def _search(
    stack: Stack,
    refs: References,
    sizes: Sizes,
    run_id: str,
    database_url: str,
    redis_url: str,
    proto: bool,
) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import AccessToken

    made = search_scale.generate(
        database_url, rows=sizes.search_rows, owners=sizes.search_owners, run_id=run_id
    )
    user = get_user_model()(pk=made["first_owner"])

    def start_prototype() -> tuple[str, int]:
        # The lean HTTP path prototype's /proto/search runs in the reference's Daphne,
        # started only once the product's classes are timed.
        return f"http://127.0.0.1:{refs.django_port}/proto/search", refs.start_django()

    def start_tier() -> tuple[str, int]:
        # The asyncio HTTP tier prototype (bench/proto_http_tier.py), after the above,
        # whose server goes first: its idle PostgreSQL sessions add up.
        refs.stack.stop_extra("ref_django")
        return f"http://127.0.0.1:{refs.http_tier_port}/search", refs.start_http_tier()

    try:
        result = search_scale.run(
            stack.base_url,
            str(AccessToken.for_user(user)),
            user_id=made["first_owner"],
            database_url=database_url,
            daphne_pid=stack.daphne_pid,
            redis_url=redis_url,
            samples=sizes.search_samples,
            seconds_per_class=sizes.search_seconds_per_class,
            prototypes={"prototype": start_prototype, "tier": start_tier} if proto else {},
        )
    finally:
        refs.stack.stop_extra("ref_django")  # a no-op when it was never started
        refs.stack.stop_extra("proto_http_tier")
    return {"generated": made, **result}
