"""Processors that only tests register (through TASK_PROCESSORS), to misbehave on purpose."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tasks.processors.context import ProcessorContext


def stubborn(ctx: ProcessorContext) -> dict:
    """Works for `seconds` without ever checking for a stop request."""
    ctx.report_progress(1)
    time.sleep(float(ctx.params.get("seconds", 60)))
    return {"done": True}


class Unusual(BaseException):
    """Not an Exception: what a careless library might raise."""


def returns(ctx: ProcessorContext):
    """Returns what `params.what` names: values a processor may return by mistake."""
    what = ctx.params["what"]
    if what == "datetime":
        return {"at": datetime.now(UTC)}
    if what == "set":
        return {1, 2, 3}
    if what == "model":
        return ctx.task
    if what == "nan":
        return {"ratio": float("nan")}
    if what == "megabytes":
        return {"blob": "x" * int(ctx.params.get("bytes", 10 * 1024 * 1024))}
    return {"fine": True}


def raises(ctx: ProcessorContext):
    """Raises what `params.what` names."""
    what = ctx.params["what"]
    if what == "system_exit":
        raise SystemExit(3)
    if what == "unusual":
        raise Unusual("out of the ordinary")
    if what == "keyboard_interrupt":
        raise KeyboardInterrupt
    raise RuntimeError("plain failure")


def never_returns(ctx: ProcessorContext) -> dict:
    """Spins without a checkpoint: only the time limit can end it."""
    while True:
        time.sleep(0.01)


def loses_its_database(ctx: ProcessorContext) -> dict:
    """Its database session is killed under it (a PostgreSQL restart or failover)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return {"unreachable": True}
