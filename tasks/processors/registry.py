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


@cache
def get_processor(kind: str) -> Processor:
    """Import the processor for `kind`; KeyError if no such kind is configured."""
    return import_string(settings.TASKHUB_TASK_PROCESSORS[kind])
