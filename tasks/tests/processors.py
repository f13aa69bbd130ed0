"""Processors that only tests register (through TASK_PROCESSORS), to misbehave on purpose."""

from __future__ import annotations

import time

from tasks.processors.context import ProcessorContext


def stubborn(ctx: ProcessorContext) -> dict:
    """Works for `seconds` without ever checking for a stop request."""
    ctx.report_progress(1)
    time.sleep(float(ctx.params.get("seconds", 60)))
    return {"done": True}
