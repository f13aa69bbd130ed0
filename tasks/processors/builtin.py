"""The built-in kinds: real, visible work with progress."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tasks.processors.context import ProcessorContext

_WORD = re.compile(r"\w+", re.UNICODE)


class ProcessorError(Exception):
    """A processor's own, expected failure; its message becomes the task's error."""


def _number(params: dict[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProcessorError(f"param {name!r} must be a number between {low} and {high}")
    return value


def simulate(ctx: ProcessorContext) -> dict[str, Any]:
    """Work for `seconds` (default 3) in `steps` (default 10), reporting progress.
    `fail_at_step` makes it fail at that step, for demos."""
    seconds = _number(ctx.params, "seconds", 3, low=0, high=86400)
    steps = int(_number(ctx.params, "steps", 10, low=1, high=10000))
    fail_at = ctx.params.get("fail_at_step")
    for step in range(1, steps + 1):
        ctx.sleep(seconds / steps)
        if fail_at is not None and step == fail_at:
            raise ProcessorError(f"simulated failure at step {step} of {steps}")
        ctx.report_progress(step * 100 / steps)
    return {"steps": steps, "seconds": seconds, "message": f"simulated {steps} steps"}


# What the page's form says and prefills for each kind (registry.kind_forms).
simulate.params_help = (
    "seconds (default 3) and steps (default 10) of work; fail_at_step makes it fail there."
)
simulate.default_params = {"seconds": 3, "steps": 10}


def echo(ctx: ProcessorContext) -> dict[str, Any]:
    """Return the task's params unchanged."""
    ctx.checkpoint()
    ctx.report_progress(100)
    return ctx.params


echo.params_help = "Any JSON object: the result is the params, unchanged."
echo.default_params = {"message": "hello"}


def wordcount(ctx: ProcessorContext) -> dict[str, Any]:
    """Count words, lines and the 10 most common words of the description."""
    text = ctx.description
    words = [word.lower() for word in _WORD.findall(text)]
    ctx.checkpoint()
    ctx.report_progress(50)
    return {
        "words": len(words),
        "lines": len(text.splitlines()),
        "characters": len(text),
        "top_words": [[word, count] for word, count in Counter(words).most_common(10)],
    }


wordcount.params_help = "No params: it counts the words of the description."
wordcount.default_params = {}


def flaky(ctx: ProcessorContext) -> dict[str, Any]:
    """Fail the first `failures` attempts (default 2), then succeed: the retry policy at
    work (docs/tasks.md, "Retries"). Its kind retries by default."""
    failures = int(_number(ctx.params, "failures", 2, low=0, high=100))
    ctx.sleep(_number(ctx.params, "seconds", 1, low=0, high=3600))
    if ctx.attempt <= failures:
        raise ProcessorError(f"flaky failure on attempt {ctx.attempt} (fails {failures})")
    ctx.report_progress(100)
    return {"attempt": ctx.attempt, "message": f"succeeded on attempt {ctx.attempt}"}


# The kind's retry policy (registry.kind_retry_defaults): a create that names none gets it.
flaky.max_attempts = 3
flaky.retry_backoff = 2
flaky.params_help = "Fails its first `failures` attempts (default 2), then succeeds."
flaky.default_params = {"failures": 2, "seconds": 1}
