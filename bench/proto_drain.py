"""Batched runs: the design that would pass issue 10's drain target (a burst of 2,000
`echo` tasks drained at >= 0.3x a bare Celery task's rate), as a prototype measured in the
same harness as the product's worker and the bare Celery reference (docs/benchmarks.md,
"Batched runs: a drain prototype measured").

**A measurement artefact, not product code.** The product sends one run message per task
and records each run's two transitions on their own: a claim (one statement, its event),
then a completion (its row, its event, an inbox entry and that entry's event), each a
transaction with its after-commit cache bump and push. For a task that does nothing, as
`echo` does, that is about 10 ms of the machine's CPU (worker, PostgreSQL and Redis)
against a bare Celery task's 1.5-2 ("Drain: what limits it"): the cost is per message and
per transaction, not per task's work. This worker takes the dispatcher's run orders in
chunks of CHUNK tasks per message and records each chunk's transitions together, through
the product's own modules:

- dispatch: the product's dispatcher task (`tasks.tasks.dispatch_pending_tasks`: the tick
  hooks, then `services.dispatch_pending_tasks`: the claim, the queued events, the resend
  of stale messages), with its send step (`services._send_and_go_on`) replaced in this
  worker's processes: one message per CHUNK orders on this worker's queue, and the next
  run sent at once while the batch was full and the queue short, as the product's does
  (the harness also sends one every DISPATCH_INTERVAL, as beat does);
- start: the chunk's queued rows locked and moved to in_progress with the values
  `task_start` writes, in two statements, and their events recorded by
  `services._record_changes` (one statement for all, one cache bump after commit, each
  status listener called);
- run: each task's processor with a `ProcessorContext` as `task_run` gives it;
- completion: the completed rows written in one statement with the values `task_complete`
  writes, then what `_record_change` writes for a terminal change, batched: the status
  listeners (webhooks' outbox) and the log line per task, the inbox entries in one INSERT,
  the task.updated and notification.new events in one `publish_many` statement (each
  task's two at consecutive `seq`s, as the product writes them; a chunk's starts all come
  before its completions), one cache bump.

What it leaves out, so it measures the path every bench task takes and no other: a
processor that raises is recorded with `task_fail` and the error's type and text, as
`task_run` records an ordinary exception, but a cancel, a shutdown's stop, the soft time
limit and a refused result are not told apart as `task_run` tells them, and there is no
wait through a PostgreSQL outage; the time limits are per message (CHUNK times the
longest timeout, plus the product's margin); the one-statement move's guard that
`updated_at` comes after the row's own. A product version would batch only kinds declared
short and keep one message per task for the rest.

Run by the harness (bench/drain.py, `prototype`): `celery -A bench.proto_drain worker
-Q bench_proto_drain ...` in the stack's environment, then a `bench_proto.dispatch` tick
every DISPATCH_INTERVAL.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")

import django

django.setup()  # the models below, before Celery's Django fixup would set it up

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench.drain import PROTO_DISPATCH, PROTO_QUEUE  # noqa: E402
from notifications import protocol  # noqa: E402
from notifications.models import Notification  # noqa: E402
from notifications.services import NewEvent, notification_data, publish_many  # noqa: E402
from taskhub.celery import app  # noqa: E402
from tasks import change_hooks, extensions, queue, services  # noqa: E402
from tasks import tasks as product_tasks  # noqa: E402
from tasks.models import StopRequest, Task, TaskStatus  # noqa: E402
from tasks.processors import registry  # noqa: E402
from tasks.processors.context import ProcessorContext  # noqa: E402

logger = logging.getLogger("bench.proto_drain")

RUN_BATCH = "bench_proto.run_batch"
# Tasks per run message: a dispatcher batch of 200 makes 20 messages.
CHUNK = 10


def _send_chunks(orders: list[queue.RunOrder], full: bool, batch: int) -> None:
    """services._send_and_go_on's place in this worker: one message per CHUNK orders,
    and the next dispatcher run at once on the product's rule (the batch was full and
    the queue holds less than two batches)."""
    with app.producer_or_acquire() as producer:
        for start in range(0, len(orders), CHUNK):
            chunk = orders[start : start + CHUNK]
            soft = CHUNK * max(order.timeout for order in chunk)
            app.send_task(
                RUN_BATCH,
                args=[[order.task_id for order in chunk]],
                queue=PROTO_QUEUE,
                producer=producer,
                ignore_result=True,
                soft_time_limit=soft,
                time_limit=soft + queue.HARD_LIMIT_MARGIN,
            )
        if not full:
            return
        waiting = queue.waiting_messages(PROTO_QUEUE)
        if waiting is not None and waiting < 2 * batch / CHUNK:
            app.send_task(PROTO_DISPATCH, queue=PROTO_QUEUE, producer=producer, ignore_result=True)


# Once, at import, in every process of this worker; the product's dispatcher calls it by
# its module-level name after commit, so the replacement is what it calls.
services._send_and_go_on = _send_chunks


@app.task(name=PROTO_DISPATCH, ignore_result=True)
def dispatch() -> int:
    if services._send_and_go_on is not _send_chunks:  # the product renamed or rebound it
        raise RuntimeError("bench.proto_drain: the dispatcher's send step is not replaced")
    return product_tasks.dispatch_pending_tasks()


def _start_all(task_ids: list[str], worker: str) -> list[Task]:
    """The chunk's queued tasks moved to in_progress as task_start moves one; the rest
    (cancelled meanwhile, a duplicate message) are left alone, as the claim leaves them."""
    with transaction.atomic():
        tasks = list(
            Task.objects.select_for_update()
            .filter(pk__in=task_ids, status=TaskStatus.QUEUED)
            .order_by("owner_id", "created_at")
        )
        now = timezone.now()
        changes = {
            "status": TaskStatus.IN_PROGRESS,
            "started_at": now,
            "worker": worker,
            "progress": 0,
            "error": "",
            "stop_requested": StopRequest.NONE,
            "updated_at": now,
        }
        Task.objects.filter(pk__in=[task.pk for task in tasks]).update(**changes)
        for task in tasks:
            for name, value in changes.items():
                setattr(task, name, value)
        if tasks:
            services._record_changes(tasks, previous_status=TaskStatus.QUEUED)
    return tasks


def _complete_all(done: list[tuple[Task, Any]]) -> None:
    """task_complete for each (task, result) still in_progress in the same attempt, in one
    transaction: one UPDATE, one INSERT of the inbox entries, one statement of events."""
    with transaction.atomic():
        attempts = {str(task.pk): task.attempts for task, _ in done}
        locked = {
            str(pk)
            for pk, attempt in Task.objects.select_for_update()
            .filter(pk__in=list(attempts), status=TaskStatus.IN_PROGRESS)
            .order_by("owner_id", "created_at")
            .values_list("pk", "attempts")
            if attempts[str(pk)] == attempt
        }
        done = [(task, result) for task, result in done if str(task.pk) in locked]
        if not done:
            return
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE tasks_task AS t SET status = %s, result = r.result, error = '', "
                "progress = 100, finished_at = %s, updated_at = %s "
                "FROM unnest(%s::uuid[], %s::jsonb[]) AS r(id, result) WHERE t.id = r.id",
                [
                    TaskStatus.COMPLETED,
                    now,
                    now,
                    [str(task.pk) for task, _ in done],
                    [json.dumps(result) for _, result in done],
                ],
            )
        tasks = []
        for task, result in done:
            task.status, task.result, task.error, task.progress = (
                TaskStatus.COMPLETED,
                result,
                "",
                100,
            )
            task.finished_at = task.updated_at = now
            services._log_change(task, previous_status=TaskStatus.IN_PROGRESS)
            extensions.task_status_changed(task, previous_status=TaskStatus.IN_PROGRESS)
            tasks.append(task)
        change_hooks.tasks_changed(tasks, previous_status=TaskStatus.IN_PROGRESS)
        owned = [task for task in tasks if task.owner_id is not None]
        entries = Notification.objects.bulk_create(
            [
                Notification(
                    user_id=task.owner_id,
                    title=f"Task “{task.title}” {task.get_status_display().lower()}"[:200],
                    task_id=task.id,
                )
                for task in owned
            ]
        )
        events: list[NewEvent] = []
        for task, entry in zip(owned, entries, strict=True):
            data = services.task_event_data(task, previous_status=TaskStatus.IN_PROGRESS)
            events.append(NewEvent(task.owner_id, protocol.TASK_UPDATED, data, task.id))
            events.append(
                NewEvent(task.owner_id, protocol.NOTIFICATION_NEW, notification_data(entry))
            )
        publish_many(events)


@app.task(name=RUN_BATCH, bind=True, ignore_result=True)
def run_batch(self: Any, task_ids: list[str]) -> None:
    tasks = _start_all(task_ids, self.request.hostname or "")
    done: list[tuple[Task, Any]] = []
    try:
        for task in tasks:
            try:
                context = ProcessorContext(
                    task,
                    report_progress=lambda value, task=task: services.task_report_progress(
                        task=task, progress=value
                    ),
                )
                result = registry.get_processor(task.kind)(context)
                services.task_result_check(result)
            except Exception as exc:  # not every way task_run tells (module docstring)
                logger.info("task %s failed: %s: %s", task.pk, type(exc).__name__, exc)
                services.task_fail(
                    task_id=task.pk, attempt=task.attempts, error=f"{type(exc).__name__}: {exc}"
                )
                continue
            done.append((task, result))
    finally:
        # What finished is recorded even when a later task's failure could not be.
        _complete_all(done)
