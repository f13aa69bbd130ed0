"""kind -> processor, from settings.TASKHUB_TASK_PROCESSORS (extend it with TASK_PROCESSORS).

A processor is a callable `processor(ctx: ProcessorContext) -> JSON-serialisable result`.
It raises to fail the task, calls ctx.report_progress(0..100) as it goes and
ctx.checkpoint() (or ctx.sleep()) between steps so cancel and shutdown can stop it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from tasks.processors.context import ProcessorContext

Processor = Callable[["ProcessorContext"], Any]


def available_kinds() -> frozenset[str]:
    return frozenset(settings.TASKHUB_TASK_PROCESSORS)


def kind_forms() -> dict[str, dict[str, Any]]:
    """What the page's task form shows for each kind: `help` (one sentence about the
    params) and `defaults` (the params it prefills). A processor declares them as the
    attributes `params_help` and `default_params`; one that does not gets the first line
    of its docstring and `{}`. A kind whose processor cannot be imported still gets an
    entry (creating such a task fails with the API's own message)."""
    forms = {}
    for kind in sorted(available_kinds()):
        try:
            processor = get_processor(kind)
        except ImportError:
            processor = None
        doc = (getattr(processor, "__doc__", None) or "").strip().splitlines()
        forms[kind] = {
            "help": getattr(processor, "params_help", None) or (doc[0] if doc else ""),
            "defaults": dict(getattr(processor, "default_params", None) or {}),
        }
    return forms


@cache
def get_processor(kind: str) -> Processor:
    """Import the processor for `kind`; KeyError if no such kind is configured."""
    return import_string(settings.TASKHUB_TASK_PROCESSORS[kind])


def kind_retry_defaults(kind: str) -> tuple[int | None, int | None]:
    """(max_attempts, retry_backoff) that `kind`'s processor declares as the attributes
    `max_attempts` and `retry_backoff` (docs/tasks.md, "Retries"); None for what it does not
    declare, for an unknown kind and for one whose processor cannot be imported (creating
    such a task fails with the API's own message, or its run fails saying why)."""
    if kind not in available_kinds():
        return None, None
    try:
        processor = get_processor(kind)
    except ImportError:
        return None, None
    return getattr(processor, "max_attempts", None), getattr(processor, "retry_backoff", None)
