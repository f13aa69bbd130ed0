"""The Celery app and every beat schedule, in one place."""

from __future__ import annotations

import os

from celery import Celery

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
        # Retention of the event log (older events can no longer be resumed from).
        "prune-old-events": {
            "task": "notifications.prune_old_events",
            "schedule": 3600.0,
            "options": {"expires": 3600},
        },
    }
