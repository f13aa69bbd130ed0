"""Graceful shutdown of a Celery worker: no task is left in_progress by a stop.

On SIGTERM Celery's warm shutdown stops consuming and waits for running tasks. We make
that wait short and bounded: running processors are asked to stop at their next
checkpoint (the runner then records them as failed, "interrupted by shutdown", which a
retry runs again). Whatever is still running after WORKER_SHUTDOWN_GRACE seconds is
recorded the same way from here, and the worker is moved on to a cold shutdown, which
ends the pool's child processes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from django.conf import settings
from django.db import close_old_connections, connections

logger = logging.getLogger("tasks")


@worker_shutting_down.connect
def _stop_running_tasks(sender: str, sig: str, how: str, exitcode: int, **kwargs: object) -> None:
    from tasks import services

    if how != "Warm":
        return
    worker = str(sender)
    try:
        asked = services.tasks_request_stop_on_worker(worker=worker)
    except Exception:
        logger.exception("could not ask running tasks to stop")
        asked = 0
    finally:
        connections.close_all()
    logger.warning(
        "worker %s shutting down (%s): asked %s running task(s) to stop", worker, sig, asked
    )
    if asked:
        timer = threading.Timer(
            settings.TASKHUB_WORKER_SHUTDOWN_GRACE, _end_the_wait, args=(worker,)
        )
        timer.daemon = True
        timer.start()


def _end_the_wait(worker: str) -> None:
    from tasks import services

    try:
        interrupted = services.tasks_interrupt_on_worker(worker=worker)
    finally:
        connections.close_all()
    if interrupted:
        logger.warning(
            "worker %s: %s task(s) did not stop in time; cold shutdown", worker, interrupted
        )
        # Celery turns SIGQUIT into a cold shutdown: the pool's children are terminated.
        os.kill(os.getpid(), signal.SIGQUIT)


@worker_ready.connect
def _close_out_a_previous_life(sender: object, **kwargs: object) -> None:
    """A task still in_progress under this node's name belongs to an earlier run of this
    worker that died without a word (SIGKILL, power loss): Celery node names are unique, so
    nobody else is running it. Record it now instead of waiting for the reaper."""
    from tasks import services

    worker = str(getattr(sender, "hostname", "") or "")
    if not worker:
        return
    try:
        services.tasks_interrupt_on_worker(worker=worker, error=services.WORKER_RESTARTED)
    except Exception:
        logger.exception("could not close out tasks of a previous run of %s", worker)
    finally:
        connections.close_all()


@task_prerun.connect
@task_postrun.connect
def _close_old_db_connections(**kwargs: object) -> None:
    """Around every task what Django does around every request (taskhub/celery.py turns
    off Celery's close-everything): a connection that failed or outlived DB_CONN_MAX_AGE is
    closed, a healthy one is kept (or, with a pool, handed back to it)."""
    close_old_connections()


@worker_process_shutdown.connect
def _close_db_connections(**kwargs: object) -> None:
    connections.close_all()
