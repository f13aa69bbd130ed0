"""Set up the bench database and stack, run every scenario, print the table, write the JSON.

Called by bench/run.py once DATABASE_URL and REDIS_URL are known to be set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import scale, scaleout
from bench.loadgen import raise_open_file_limit
from bench.measure import track_postgres
from bench.report import render
from bench.stack import (
    STACK_ENV,
    BenchError,
    Stack,
    bench_database_url,
    check_local,
    prepare_database,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The small, single-client scenarios (bench/scenarios.py): the default and --quick run them.
SCENARIOS = ("start_latency", "throughput", "event_latency", "resume", "fanout_memory")
# 1 web instance beside 2 behind nginx (bench/scaleout.py): only when asked for, as it
# starts its own web tiers and would push --scale past its 15 minutes.
SCALE_OUT = "scale_out"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark a real TaskHub stack (see docs/benchmarks.md).",
    )
    parser.add_argument("--start-samples", type=int, default=12, help="per path (default 12)")
    parser.add_argument("--tasks", type=int, default=150, help="throughput batch (150)")
    parser.add_argument("--events", type=int, default=40, help="event latency tasks (40)")
    parser.add_argument("--resume-events", type=int, default=1000, help="missed events (1000)")
    parser.add_argument("--resume-rounds", type=int, default=3, help="reconnects (3)")
    parser.add_argument("--sockets", type=int, default=100, help="fan-out sockets (100)")
    parser.add_argument("--fanout-rounds", type=int, default=5, help="fan-out rounds (5)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny numbers: checks the harness, not the system"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the big comparisons only (1k/5k/10k sockets, 5k x 1000 ev/s, 1M rows...)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="delivery and REST create at 1 and 2 web instances (behind nginx), and the "
        "factor between them; alone unless --scale or --only adds parts (~3 min)",
    )
    parser.add_argument(
        "--proto",
        action="store_true",
        help="add the lean socket tier prototype (bench/proto_socket_tier.py) as a third "
        "column to sockets and realtime; on with --scale",
    )
    parser.add_argument("--clients", type=int, default=2, help="WebSocket client processes (2)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (2)")
    parser.add_argument(
        "--ws-concurrency", type=int, default=100, help="handshakes in flight at once (100)"
    )
    parser.add_argument(
        "--delivery-seconds", type=float, help="how long the delivery scenario publishes"
    )
    parser.add_argument("--output", type=Path, help="JSON path (bench/results/<time>.json)")
    parser.add_argument(
        "--only",
        action="append",
        choices=(*SCENARIOS, *scale.PARTS, SCALE_OUT),
        help="run just this scenario (repeatable); default: all, in this order: "
        + ", ".join(SCENARIOS + scale.PARTS),
    )
    args = parser.parse_args(argv)
    if args.quick and args.scale:
        parser.error("--quick and --scale exclude each other")
    args.sizes = scale.SCALE if args.scale else scale.QUICK if args.quick else scale.DEFAULT
    args.proto = args.proto or args.scale
    if args.delivery_seconds:
        args.sizes.seconds = args.delivery_seconds
    if not args.only and args.scale:
        args.only = list(scale.PARTS)
    if args.scale_out:
        args.only = [*(args.only or []), SCALE_OUT]
    args.scale_out_sizes = scaleout.QUICK if args.quick else scaleout.DEFAULT
    if not 1 <= args.clients <= 8 or not 1 <= args.publishers <= 8:
        parser.error("--clients and --publishers must be between 1 and 8")
    if args.quick:
        args.start_samples, args.tasks, args.events = 3, 20, 5
        args.resume_events, args.resume_rounds = 50, 2
        args.sockets, args.fanout_rounds = 10, 2
    for name in ("start_samples", "tasks", "events", "resume_events", "resume_rounds"):
        if not 1 <= getattr(args, name) <= 5000:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and 5000")
    if not 2 <= args.sockets <= 400 or not 1 <= args.fanout_rounds <= 50:
        parser.error("--sockets must be 2..400 and --fanout-rounds 1..50")
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def machine_info() -> dict[str, Any]:
    from django.db import connection

    from notifications.redis_client import sync_redis

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    connection.close()
    packages = {name: metadata.version(name) for name in ("django", "channels", "daphne", "celery")}
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": sync_redis().info("server").get("redis_version"),
        "packages": packages,
    }


def check_broker_is_ours() -> None:
    """Another worker on this Redis DB would take our run messages and skew everything."""
    from taskhub.celery import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:
        raise BenchError(f"cannot reach the broker at REDIS_URL: {exc}") from exc
    if replies:
        names = ", ".join(name for reply in replies for name in reply)
        raise BenchError(
            f"Celery worker(s) already consume REDIS_URL's database ({names}); give the "
            "bench a Redis DB of its own (REDIS_URL=redis://127.0.0.1:6379/<n>)"
        )


async def run_scenarios(
    args: argparse.Namespace, stack: Stack, results: dict[str, Any], run_id: str
) -> None:
    from bench import scenarios
    from bench.client import Db

    db = Db()
    client = None
    try:
        client = await scenarios.log_in(stack.base_url, db, run_id)
        await scenarios.warm_up(client)
        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("start_latency", lambda: scenarios.start_latency(client, samples=args.start_samples)),
            ("throughput", lambda: scenarios.throughput(client, count=args.tasks)),
            ("event_latency", lambda: scenarios.event_latency(client, count=args.events)),
            (
                "resume",
                lambda: scenarios.resume(
                    client, events=args.resume_events, rounds=args.resume_rounds
                ),
            ),
            (
                "fanout_memory",
                lambda: scenarios.fanout_and_memory(
                    client,
                    daphne_pid=stack.daphne_pid,
                    sockets=args.sockets,
                    rounds=args.fanout_rounds,
                ),
            ),
        ]
        for name, step in steps:
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                outcome = await step()
            except Exception as exc:  # one broken part must not hide the others' numbers
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc(file=sys.stderr)
                # Let what that part left running finish before the next one measures.
                await asyncio.sleep(2)
            if name == "fanout_memory" and "error" not in outcome:
                results.update(outcome)
            else:
                results[name] = outcome
            results.setdefault("seconds", {})[name] = round(time.monotonic() - started, 1)
        if not args.only or set(args.only) & set(scale.PARTS):
            results["scale"] = await asyncio.to_thread(
                _run_scale, args, stack, client.user_id, client.token, run_id
            )
        if args.only and SCALE_OUT in args.only:
            print("bench: scale_out (1 and 2 web instances) ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                results[SCALE_OUT] = await asyncio.to_thread(
                    _run_scale_out, args, stack, client.token, run_id
                )
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                results[SCALE_OUT] = {"error": f"{type(exc).__name__}: {exc}"}
            results.setdefault("seconds", {})[SCALE_OUT] = round(time.monotonic() - started, 1)
    finally:
        if client is not None:
            await client.http.aclose()
        db.close()


def _run_scale(
    args: argparse.Namespace, stack: Stack, owner_id: int, token: str, run_id: str
) -> dict[str, Any]:
    from django.db import connections

    try:
        return scale.run(
            stack,
            sizes=args.sizes,
            only=[name for name in args.only or scale.PARTS if name in scale.PARTS],
            clients_n=args.clients,
            publishers_n=args.publishers,
            concurrency=args.ws_concurrency,
            owner_id=owner_id,
            token=token,
            run_id=run_id,
            database_url=os.environ["DATABASE_URL"],
            redis_url=os.environ["REDIS_URL"],
            proto=args.proto,
        )
    finally:
        connections.close_all()


def _run_scale_out(
    args: argparse.Namespace, stack: Stack, token: str, run_id: str
) -> dict[str, Any]:
    from django.db import connections

    try:
        sizes = args.scale_out_sizes
        return scaleout.run(
            stack,
            sizes=sizes,
            users=scale.make_users(sizes.sockets, f"{run_id}so"),
            token=token,
            clients_n=args.clients,
            publishers_n=args.publishers,
            concurrency=args.ws_concurrency,
            redis_url=os.environ["REDIS_URL"],
        )
    finally:
        connections.close_all()


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    original_database_url = os.environ["DATABASE_URL"]
    command = "DATABASE_URL=... REDIS_URL=... .venv/bin/python bench/run.py " + shlex.join(argv)
    try:
        check_local(original_database_url, os.environ["REDIS_URL"])
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    bench_url = bench_database_url(original_database_url)
    # Everything we start (the stack, the references, the client and publisher processes)
    # inherits this environment: DEBUG off needs a SECRET_KEY, and the references verify
    # the project's JWTs with it.
    os.environ.update(
        STACK_ENV,
        DATABASE_URL=bench_url,
        DJANGO_SETTINGS_MODULE="taskhub.settings",
        SECRET_KEY=f"bench-{uuid.uuid4().hex}{uuid.uuid4().hex}",
    )
    # Thousands of sockets are thousands of descriptors, in Daphne and in the reference
    # as much as in the clients: raised here, inherited by every child.
    open_files = raise_open_file_limit()
    # Metrics files of another stack's multiprocess registry are not ours to write to.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import django
    from django.core.management import call_command

    django.setup()  # reads settings; connects to nothing yet
    # Django's LOGGING puts the root logger at INFO: one httpx line per request is noise.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The harness creates tasks itself (the drain's burst): one INFO line each is noise.
    logging.getLogger("tasks").setLevel(logging.WARNING)
    try:
        # Before the drop: a worker already on this Redis DB may be another bench run's,
        # whose database we would pull from under it.
        check_broker_is_ours()
        prepare_database(original_database_url)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(f"bench: migrating {bench_url.rsplit('/', 1)[-1]} ...", file=sys.stderr, flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    # PostgreSQL's CPU in every "CPU per unit of work" figure (bench/measure.py): the
    # server's processes are found through a session's backend, so only on this machine.
    postgres_cpu = track_postgres(bench_url)
    if postgres_cpu is not None:
        print(f"bench: PostgreSQL CPU not measured: {postgres_cpu}", file=sys.stderr)

    run_id = uuid.uuid4().hex[:8]
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "started_at": started.isoformat(),
        "command": command.strip(),
        "database": bench_url.rsplit("/", 1)[-1],
        "machine": machine_info(),
        "params": {
            k: v for k, v in vars(args).items() if k not in ("output", "sizes", "scale_out_sizes")
        },
        "sizes": vars(args.sizes),
        "scale_out_sizes": vars(args.scale_out_sizes),
        "stack_env": STACK_ENV,
        "open_files_limit": open_files,
        "postgres_cpu": postgres_cpu or "measured",
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    stack: Stack | None = None
    exit_code = 0
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        stack = Stack(env=env, concurrency=args.concurrency)
        print("bench: starting daphne, worker, beat ...", file=sys.stderr, flush=True)
        stack.start()
        asyncio.run(run_scenarios(args, stack, results, run_id))
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        results["error"] = "interrupted"
        exit_code = 130
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        results["error"] = f"{type(exc).__name__}: {exc}"
        exit_code = 1
    finally:
        # The stop is bounded (20 s a process, then SIGKILL); a second Ctrl-C must not cut
        # it short and leave processes behind.
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            if exit_code:
                for name, lines in stack.outputs().items():
                    print(f"--- {name} (last lines) ---", *lines, sep="\n", file=sys.stderr)
            stack.stop()
        signal.signal(signal.SIGINT, previous_sigint)
        signal.signal(signal.SIGTERM, previous_sigterm)

    load_after = os.getloadavg()
    results["machine"]["loadavg_1m_before_after"] = [
        round(load_before[0], 2),
        round(load_after[0], 2),
    ]
    results["duration_seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    failed = [name for name, part in results.items() if isinstance(part, dict) and "error" in part]
    if failed and not exit_code:
        exit_code = 1
    output = args.output or RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results))
    print(f"\nJSON: {output}")
    return exit_code
