"""Every Celery message TaskHub sends: run a task, revoke a run, nudge the dispatcher.

The one module that knows the Celery app. It names tasks by their registered names and
never imports the Celery tasks themselves (tasks/tasks.py imports services, so a service
that imported its own adapter would close a cycle). Call these after commit only: a
message about a row another process cannot see yet would find nothing to do.
docs/architecture.md, "The task path", has the whole picture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from taskhub.celery import app

logger = logging.getLogger("tasks")

RUN_TASK = "tasks.run_task"
DISPATCH_PENDING_TASKS = "tasks.dispatch_pending_tasks"
REAP_STALLED_TASKS = "tasks.reap_stalled_tasks"
PRUNE_OLD_EVENTS = "notifications.prune_old_events"

# Seconds past a run's soft limit (the task's own timeout, which raises inside the
# processor so the runner records a clean "timed out") before Celery's hard limit kills a
# processor that ignores it.
HARD_LIMIT_MARGIN = 30


@dataclass(frozen=True)
class RunOrder:
    """What one run message carries; built by the dispatcher inside its transaction."""

    task_id: str
    attempt: int
    timeout: int


def run_message_id(task_id: UUID | str, attempt: int) -> str:
    """The Celery id of one attempt's run message: a revoke of attempt 1 never blocks
    attempt 2."""
    return f"{task_id}:{attempt}"


def send_run_messages(orders: Iterable[RunOrder]) -> None:
    for order in orders:
        app.send_task(
            RUN_TASK,
            args=[order.task_id],
            task_id=run_message_id(order.task_id, order.attempt),
            soft_time_limit=order.timeout,
            time_limit=order.timeout + HARD_LIMIT_MARGIN,
        )


def revoke_run_message(task_id: UUID | str, attempt: int) -> None:
    """Tell the workers not to start this attempt (a cancel's broadcast; the cooperative
    stop at the next checkpoint works without it, so a failure is only logged)."""
    try:
        app.control.revoke(run_message_id(task_id, attempt))
    except Exception:
        logger.warning("revoke of task %s failed", task_id, exc_info=True)


def send_dispatch(*, expires: float) -> None:
    """One run of the dispatcher, now (tasks/nudge.py decides when)."""
    app.send_task(DISPATCH_PENDING_TASKS, expires=expires)
