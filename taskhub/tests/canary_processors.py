"""A processor that only taskhub/tests/test_log_redaction.py registers (TASK_PROCESSORS):
it writes its params, a token among them, every way a processor's code might."""

from __future__ import annotations

import logging
import sys

from celery.utils.log import get_task_logger

from tasks.processors.context import ProcessorContext

# A child of celery.task: the logger Celery's documentation gives tasks.
task_logger = get_task_logger(__name__)


def logs_its_params(ctx: ProcessorContext) -> dict:
    task_logger.warning("canary task logger: %s", ctx.params)
    logging.getLogger("tasks").warning("canary tasks logger: %s", ctx.params)
    print(f"canary print: {ctx.params}")
    print(f"canary stderr: {ctx.params}", file=sys.stderr)
    return {"logged": True}
