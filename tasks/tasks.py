"""Celery tasks: thin adapters that take ids and call tasks.services (names: tasks.queue)."""

from __future__ import annotations

import logging

from celery import shared_task

from taskhub.outages import DATABASE, is_database_outage, skip_while_database_is_away
from tasks import extensions, queue, services

logger = logging.getLogger("tasks")


def _skipped_while_database_is_away(exc: Exception, what: str) -> int:
    """A housekeeping tick that met a PostgreSQL outage: the next tick does its work."""
    skip_while_database_is_away(exc, f"{what} skipped until it is back")
    return 0


@shared_task(name=queue.DISPATCH_PENDING_TASKS, ignore_result=True)
def dispatch_pending_tasks() -> int:
    # Other apps' tick work first (schedules create their due tasks), so what it creates is
    # queued by this very dispatch. A failing hook is logged and the dispatch goes on.
    for name, hook in extensions.tick_hooks():
        try:
            hook()
        except Exception as exc:
            if is_database_outage(exc):
                DATABASE.failed(exc, f"{name} ticks are skipped until it is back")
            else:
                logger.exception("dispatcher tick hook %s failed", name)
    try:
        return len(services.dispatch_pending_tasks())
    except Exception as exc:
        return _skipped_while_database_is_away(exc, "dispatcher ticks are")


@shared_task(name=queue.REAP_STALLED_TASKS, ignore_result=True)
def reap_stalled_tasks() -> int:
    try:
        return services.reap_stalled_tasks()
    except Exception as exc:
        return _skipped_while_database_is_away(exc, "reaper ticks are")


@shared_task(name=queue.PRUNE_IDEMPOTENCY_KEYS, ignore_result=True)
def prune_idempotency_keys() -> int:
    """Idempotency-Key retention (IDEMPOTENCY_KEY_HOURS), scheduled by beat."""
    try:
        return services.idempotency_keys_prune()
    except Exception as exc:
        return _skipped_while_database_is_away(exc, "idempotency key pruning is")


@shared_task(name=queue.RUN_TASK, bind=True, ignore_result=True)
def run_task(self, task_id: str, **labels: object) -> None:
    """Run one task (services.task_run). A duplicate message (a re-send, a redelivery)
    finds the task no longer queued and does nothing. `labels` (kind, owner_id, attempt)
    are for operators reading `celery inspect`; the row is the truth, so they are unused."""
    if services.task_run(task_id=task_id, worker=self.request.hostname or "") is None:
        logger.info("task %s not queued any more; message ignored", task_id)
