"""The Celery app and every beat schedule, in one place."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")

app = Celery("taskhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes every database connection before and after each task (and,
# in a prefork child with Django's connection pool configured, the whole pool) unless
# DB_REUSE_MAX is set: a new PostgreSQL session per task whatever DB_CONN_MAX_AGE or the
# pool say (measured: a tenth of a worker's CPU per echo task). Set, it closes them only
# every DB_REUSE_MAX tasks; out of reach here, so Django's own rules decide instead:
# tasks/worker_signals.py runs close_old_connections() around each task, as Django does
# around each request.
app.conf.update({"CELERY_DB_REUSE_MAX": 2**31})
app.autodiscover_tasks()


def send_task(name: str, **options: Any) -> None:
    """app.send_task for a message whose result nobody reads (none are: results live in the
    Task row, CELERY_TASK_IGNORE_RESULT). A message sent by name does not see the task's
    ignore_result, so without it send_task also asks the result backend to note the call
    (the backend itself is shared by the process: CELERY_RESULT_BACKEND_THREAD_SAFE)."""
    app.send_task(name, ignore_result=True, **options)


@signals.setup_logging.connect
def _keep_django_logging(loglevel: int | None = None, **kwargs: object) -> None:
    """settings.LOGGING stays the only logging config of the worker, its pool children and
    beat: with a receiver here Celery configures none of its own. Without one it adds
    handlers that do not redact (taskhub/redaction.py): one on celery.task with propagation
    off, so a task's own logger (celery.utils.log.get_task_logger) bypassed the root's
    redacting handler, and one on the multiprocessing logger.

    Django has configured logging by now (the Django fixup runs django.setup() at
    worker_init and when beat imports the task modules, both before this signal). Celery's
    --loglevel still sets the root's level, as it did."""
    if loglevel:
        logging.getLogger().setLevel(loglevel)


@signals.worker_init.connect
@signals.beat_init.connect
def _cap_the_database_pool(**kwargs: object) -> None:
    """A Celery process holds at most DB_POOL_MAX_CELERY PostgreSQL connections (a pool
    process runs one task at a time), not the web's DB_POOL_MAX: taskhub/db_pool.py,
    cap_pool_size. Sent before the worker forks its pool processes, so they inherit it."""
    from django.conf import settings

    from taskhub.db_pool import cap_pool_size

    cap_pool_size(settings.TASKHUB_DB_POOL_MAX_CELERY)


@signals.celeryd_after_setup.connect
def _redirect_worker_output(sender: object, instance: Any, **kwargs: object) -> None:
    """What the worker does itself only when setup_logging has no receiver: print() and
    stray writes to stderr become log lines (celery.redirected), so they are redacted too.
    Sent before the pool starts, so its children inherit it."""
    if getattr(instance, "redirect_stdouts", False):
        app.log.redirect_stdouts(instance.redirect_stdouts_level)


def _closed_transport_is_a_connection_error() -> None:
    """kombu 5.7: a worker whose broker connection was lost right after an ack failed
    ("Couldn't ack ..., reason: network:ConnectionError") closes a channel whose
    transport has already let go of its connection, and restoring the channel's unacked
    message then reads that connection's host: AttributeError, "Unrecoverable error", and
    the worker exits instead of reconnecting (issue 13, R3: once in 20 Redis restarts).
    Raised as what it is, a connection error, the close ignores it as it ignores every
    other broker error, and the worker reconnects; the message stays in Redis's unacked
    set, restored there after the visibility timeout, and the task's row is the state
    either way (the dispatcher re-sends a lost run message)."""
    import redis
    from kombu.transport import redis as transport

    original = transport.Channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return original(self, asynchronous=asynchronous)

    transport.Channel._connparams = _connparams


_closed_transport_is_a_connection_error()


@signals.after_task_publish.connect
def _broker_answered(**kwargs: object) -> None:
    """A message reached the broker: a Redis outage this process logged is over. Beat's
    only sign of it (it sends and never reads); taskhub/outages.py, one line each way."""
    # The module, not `from taskhub import`: the package imports this one (its app).
    # Here, not at the top: it imports django.db, not before Django is set up.
    from taskhub.outages import REDIS

    REDIS.recovered()


@app.on_after_finalize.connect
def _schedule_periodic_work(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    sender.conf.beat_schedule = {
        # The dispatcher: the only code that moves pending -> queued and sends run messages.
        # Creates also nudge it after commit; this tick catches scheduled (run_at) tasks,
        # lost nudges and lost run messages. expires: a tick that waited longer than one
        # interval in the queue is pointless, the next one is already on its way.
        "dispatch-pending-tasks": {
            "task": "tasks.dispatch_pending_tasks",
            "schedule": settings.TASKHUB_DISPATCH_INTERVAL,
            "options": {"expires": max(settings.TASKHUB_DISPATCH_INTERVAL * 5, 5)},
        },
        # The reaper: ends in_progress tasks whose worker died without a word (SIGKILL, OOM).
        "reap-stalled-tasks": {
            "task": "tasks.reap_stalled_tasks",
            "schedule": settings.TASKHUB_REAPER_INTERVAL,
            "options": {"expires": settings.TASKHUB_REAPER_INTERVAL},
        },
        # Webhooks owed and due whose Celery message was lost (Redis down, a worker
        # killed mid-attempt) or whose retry was too far off for a countdown: the
        # PostgreSQL outbox is the truth, this sends what it says is due.
        "sweep-due-webhooks": {
            "task": "webhooks.sweep_due_deliveries",
            "schedule": settings.TASKHUB_WEBHOOK_SWEEP_INTERVAL,
            "options": {"expires": settings.TASKHUB_WEBHOOK_SWEEP_INTERVAL},
        },
        # Retention of the event log (older events can no longer be resumed from).
        "prune-old-events": {
            "task": "notifications.prune_old_events",
            "schedule": 3600.0,
            "options": {"expires": 3600},
        },
        # Retention of Idempotency-Keys: a key older than IDEMPOTENCY_KEY_HOURS already
        # counts as unused (tasks.services.task_create_idempotent); this deletes its row.
        "prune-idempotency-keys": {
            "task": "tasks.prune_idempotency_keys",
            "schedule": 3600.0,
            "options": {"expires": 3600},
        },
    }
