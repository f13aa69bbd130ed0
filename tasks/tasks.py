"""Celery tasks: thin adapters that take ids, load rows and call tasks.services."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import close_old_connections, connection

from tasks import services
from tasks.models import StopRequest
from tasks.processors import registry
from tasks.processors.context import ProcessorContext, StopRequested

logger = logging.getLogger("tasks")


@shared_task(name="tasks.dispatch_pending_tasks", ignore_result=True)
def dispatch_pending_tasks() -> int:
    return len(services.dispatch_pending_tasks())


@shared_task(name="tasks.reap_stalled_tasks", ignore_result=True)
def reap_stalled_tasks() -> int:
    return services.reap_stalled_tasks()


@shared_task(name="tasks.run_task", bind=True, ignore_result=True)
def run_task(self, task_id: str) -> None:
    """Run one task: queued -> in_progress -> completed | failed | cancelled.

    A duplicate message (a re-send, a redelivery) finds the task no longer queued and
    does nothing: the claim in task_start is the guard.
    """
    close_old_connections()
    task = services.task_start(task_id=task_id, worker=self.request.hostname or "")
    if task is None:
        logger.info("task %s not queued any more; message ignored", task_id)
        return
    try:
        processor = registry.get_processor(task.kind)
        result = processor(ProcessorContext(task))
    except SoftTimeLimitExceeded:
        # The limit can fire in the middle of a query: start again on a fresh connection.
        connection.close()
        logger.warning("task %s timed out after %s s", task_id, task.timeout)
        services.task_fail(task_id=task_id, error=f"timed out after {task.timeout} s")
    except StopRequested as stop:
        if stop.reason == StopRequest.SHUTDOWN:
            services.task_fail(task_id=task_id, error=services.INTERRUPTED_BY_SHUTDOWN)
        else:
            services.task_mark_cancelled(task_id=task_id)
    except Exception as exc:
        logger.info("task %s failed: %s", task_id, exc)
        services.task_fail(task_id=task_id, error=f"{type(exc).__name__}: {exc}")
    else:
        services.task_complete(task_id=task_id, result=result)
