"""Every Celery message TaskHub sends: run a task, revoke a run, nudge the dispatcher;
and how many wait in a queue.

The one module that knows the Celery app. It names tasks by their registered names and
never imports the Celery tasks themselves (tasks/tasks.py imports services, so a service
that imported its own adapter would close a cycle). Call these after commit only: a
message about a row another process cannot see yet would find nothing to do.
docs/architecture.md, "The task path", has the whole picture.

The broker is Redis, which may be down while PostgreSQL is up: a message that cannot be
sent is logged (one line per outage, taskhub/outages.py) and never fails its caller,
because the rows say what is owed. A `pending` row is found by the dispatcher's next
tick, a `queued` one whose message was lost is re-sent after QUEUED_RESEND_AFTER, and a
revoke only hurries a cancel that the processor's checkpoint carries out anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from kombu.exceptions import ChannelError

from taskhub.celery import app, send_task
from taskhub.outages import REDIS, is_redis_outage

if TYPE_CHECKING:
    from tasks.models import Task

logger = logging.getLogger("tasks")

RUN_TASK = "tasks.run_task"
DISPATCH_PENDING_TASKS = "tasks.dispatch_pending_tasks"
REAP_STALLED_TASKS = "tasks.reap_stalled_tasks"
PRUNE_OLD_EVENTS = "notifications.prune_old_events"
PRUNE_IDEMPOTENCY_KEYS = "tasks.prune_idempotency_keys"

# Seconds past a run's soft limit (the task's own timeout, which raises inside the
# processor so the runner records a clean "timed out") before Celery's hard limit kills a
# processor that ignores it.
HARD_LIMIT_MARGIN = 30


# A keyword of TaskHub's own revoke broadcast (a cancel's): the workers' revoke command
# (tasks/worker_signals.py) leaves those to the cancel that sent them and records every
# other revoke, the celery CLI's, as a cancel.
TASKHUB_CANCEL = "taskhub_cancel"


@dataclass(frozen=True)
class RunOrder:
    """What one run message carries; built by the dispatcher inside its transaction."""

    task_id: str
    attempt: int
    timeout: int
    kind: str = ""
    owner_id: int | None = None

    @classmethod
    def of(cls, task: Task) -> RunOrder:
        return cls(str(task.pk), task.attempts, task.timeout, task.kind, task.owner_id)


def run_message_id(task_id: UUID | str, attempt: int) -> str:
    """The Celery id of one attempt's run message: a revoke of attempt 1 never blocks
    attempt 2 (Celery keeps revoked ids for hours; a retry reusing the id would be
    discarded by every worker that saw the revoke)."""
    return f"{task_id}:{attempt}"


def parse_run_message_id(celery_id: str) -> tuple[UUID, int | None] | None:
    """(task id, attempt) of a run message's Celery id, (task id, None) of a bare TaskHub
    task id (what an operator copies from the admin), None for anything else."""
    task_id, _, attempt = celery_id.partition(":")
    try:
        return UUID(task_id), (int(attempt) if attempt else None)
    except ValueError:
        return None


def send_run_messages(orders: Iterable[RunOrder]) -> int:
    """Send each order's run message; returns how many went out (fewer: Redis is down, and
    the rest wait for the dispatcher's resend)."""
    orders = list(orders)
    for sent, order in enumerate(orders):
        try:
            send_task(
                RUN_TASK,
                args=[order.task_id],
                # Only for operators: `celery inspect active|reserved` shows them, so a
                # message maps to its task, kind and owner without a database query
                # (docs/operations.md).
                kwargs={"kind": order.kind, "owner_id": order.owner_id, "attempt": order.attempt},
                task_id=run_message_id(order.task_id, order.attempt),
                soft_time_limit=order.timeout,
                time_limit=order.timeout + HARD_LIMIT_MARGIN,
            )
        except Exception as exc:
            if not is_redis_outage(exc):
                raise
            # The rest would fail the same way, each after kombu's retries.
            REDIS.failed(
                exc,
                f"run messages not sent ({len(orders) - sent} task(s) stay queued until the "
                "dispatcher re-sends them after QUEUED_RESEND_AFTER)",
            )
            return sent
    if orders:
        REDIS.recovered()
    return len(orders)


def revoke_run_message(task_id: UUID | str, attempt: int) -> None:
    """Tell the workers not to start this attempt (a cancel's broadcast; the cooperative
    stop at the next checkpoint works without it, so a failure is only logged)."""
    try:
        app.control.revoke(run_message_id(task_id, attempt), **{TASKHUB_CANCEL: True})
    except Exception as exc:
        if is_redis_outage(exc):
            REDIS.failed(exc, "revokes are not sent; cancels wait for the next checkpoint")
        else:
            logger.warning("revoke of task %s failed", task_id, exc_info=True)


def send_dispatch(*, expires: float) -> None:
    """One run of the dispatcher, now (tasks/nudge.py decides when)."""
    try:
        send_task(DISPATCH_PENDING_TASKS, expires=expires)
    except Exception as exc:
        if not is_redis_outage(exc):
            raise
        REDIS.failed(exc, "the dispatcher is not nudged; new tasks wait for its next tick")


def waiting_messages(queue: str | None = None) -> int | None:
    """Messages waiting in `queue` (default: the run messages' queue) and not yet taken by
    a worker, as the broker counts them; None if it cannot be asked (Redis down: logged
    once per outage, and not asked again while the outage lasts)."""
    if REDIS.down:
        return None
    queue = queue or app.conf.task_default_queue
    try:
        with app.connection_or_acquire() as connection:
            try:
                declared = connection.default_channel.queue_declare(queue=queue, passive=True)
            except ChannelError as missing:
                if "NOT_FOUND" not in str(missing):
                    raise
                return 0  # Redis drops an empty queue's key: no such queue, nothing waits
    except Exception as exc:
        if is_redis_outage(exc):
            REDIS.failed(exc, "the run queue's length is unknown; the dispatcher keeps to its tick")
        else:
            logger.warning("could not count the messages waiting in %s", queue, exc_info=True)
        return None
    REDIS.recovered()
    return declared.message_count
