"""What a worker process does for TaskHub beyond running tasks: a stop leaves no task
in_progress, and the celery CLI's revoke and terminate end the task in TaskHub.

Shutdown. On SIGTERM Celery's warm shutdown stops consuming and waits for running tasks. We make
that wait short and bounded: running processors are asked to stop at their next
checkpoint (the runner then records them as failed, "interrupted by shutdown", which a
retry runs again). Whatever is still running after WORKER_SHUTDOWN_GRACE seconds is
recorded the same way from here, and the worker is moved on to a cold shutdown, which
ends the pool's child processes. A cold shutdown (SIGQUIT) ends them at once, so what
they ran is recorded failed right away.

Revoke and terminate. `celery control revoke|terminate` broadcasts to every worker, and
Celery alone only keeps the id in each worker's memory (lost on restart) and kills a
process without a word. So the workers' two control commands are wrapped: each id, a run
message's Celery id `<task id>:<attempt>` or a bare TaskHub task id, is first recorded
through services.task_revoke (pending/queued: cancelled at once, durably; running: asked
to stop at its next checkpoint), bare ids are translated to the current attempt's Celery
id, and Celery's own command then does its part. A terminate kills the process running the
task; Celery's task_revoked signal (terminated) on that worker records it cancelled at
once, so nothing is left for the reaper. TaskHub's own cancel broadcasts its revokes with
queue.TASKHUB_CANCEL, and those are left to Celery: the cancel has recorded itself.
docs/operations.md says what each command does, for operators.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_revoked,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from celery.utils.functional import maybe_list
from celery.worker.control import Panel
from django.conf import settings
from django.db import close_old_connections, connections

from tasks import queue

logger = logging.getLogger("tasks")


@worker_shutting_down.connect
def _stop_running_tasks(sender: str, sig: str, how: str, exitcode: int, **kwargs: object) -> None:
    from tasks import services

    worker = str(sender)
    if how == "Cold":
        _record_cold_shutdown(worker, sig)
        return
    if how != "Warm":
        return
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


def _record_cold_shutdown(worker: str, sig: str) -> None:
    """Celery is about to end the pool's processes mid-task: record their tasks failed now
    (retryable) rather than leave them to a restart of this worker or the reaper."""
    from tasks import services

    try:
        interrupted = services.tasks_interrupt_on_worker(worker=worker)
    except Exception:
        logger.exception("could not record the tasks of %s at its cold shutdown", worker)
        return
    finally:
        connections.close_all()
    logger.warning(
        "worker %s cold shutdown (%s): %s running task(s) recorded failed",
        worker,
        sig,
        interrupted,
    )


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


# --- Revoke and terminate from the celery CLI ------------------------------------------

_celery_revoke = Panel.data["revoke"]


def _revoke(state, task_id, terminate=False, signal=None, **kwargs):
    """Celery's `revoke` control command, TaskHub's state first (module docstring)."""
    if kwargs.pop(queue.TASKHUB_CANCEL, False):
        return _celery_revoke(state, task_id, terminate=terminate, signal=signal, **kwargs)
    from tasks import services

    celery_ids: set[str] = set()
    outcomes: list[str] = []
    try:
        for given in maybe_list(task_id) or []:
            celery_ids.add(given)
            parsed = queue.parse_run_message_id(given)
            if parsed is None:
                continue
            try:
                task, outcome = services.task_revoke(task_id=parsed[0], attempt=parsed[1])
            except Exception:
                logger.exception("could not record the revoke of %s", given)
                outcomes.append(f"{given}: not recorded (see the worker's log)")
                continue
            if task is not None:
                # A bare id names the task; Celery knows its run by the attempt's id.
                celery_ids.add(queue.run_message_id(task.pk, parsed[1] or task.attempts))
                logger.warning(
                    "task %s %s (%s): %s", task.pk, services.REVOKED_FROM_CLI, given, outcome
                )
            outcomes.append(f"{given}: {outcome}")
    finally:
        connections.close_all()
    reply = _celery_revoke(state, celery_ids, terminate=terminate, signal=signal, **kwargs)
    if outcomes and isinstance(reply, dict) and "ok" in reply:
        reply = {"ok": f"{reply['ok']}; TaskHub: {'; '.join(outcomes)}"}
    return reply


def _terminate(state, signal, task_id, **kwargs):
    """Celery's `terminate` control command (revoke + kill), through _revoke."""
    return _revoke(state, task_id, terminate=True, signal=signal, **kwargs)


# The pidbox dispatches through this dict, so replacing the handlers keeps Celery's names,
# arguments and help (`celery control --help`) as they are.
Panel.data["revoke"] = _revoke
Panel.data["terminate"] = _terminate


@task_revoked.connect
def _record_a_terminated_run(
    sender: object, request: object, terminated: bool, **kwargs: object
) -> None:
    """This worker killed the process running a task (`terminate`): the run can never
    record its outcome, so record it cancelled now. A discarded message (revoked before it
    started) needs nothing: _revoke recorded the cancel when the revoke came in."""
    from tasks import services

    if not terminated or getattr(sender, "name", None) != queue.RUN_TASK:
        return
    parsed = queue.parse_run_message_id(str(getattr(request, "id", "")))
    if parsed is None:
        return
    try:
        _task, outcome = services.task_revoke(task_id=parsed[0], attempt=parsed[1], terminated=True)
        logger.warning(
            "task %s terminated from the celery CLI (signal %s): %s",
            parsed[0],
            kwargs.get("signum"),
            outcome,
        )
    except Exception:
        logger.exception("could not record the termination of %s", parsed[0])
    finally:
        connections.close_all()


@task_failure.connect
def _record_a_lost_run(
    sender: object, task_id: str, exception: BaseException, **kwargs: object
) -> None:
    """In the worker's main process: a pool process died mid-run without a word (SIGKILL,
    the OOM killer: Celery's WorkerLostError; the hard time limit: TimeLimitExceeded). Its
    run can never record its outcome, so record it here at once, failed and retryable,
    rather than leave it in_progress until the reaper (issue 13, R1). Celery sends
    task_failure from the main process for these only after the child is gone, so the run
    cannot record anything after us; services.task_fail_lost_run ignores an attempt that
    is not the task's current one or that already ended."""
    if getattr(sender, "name", None) != queue.RUN_TASK:
        return
    if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
        return
    parsed = queue.parse_run_message_id(str(task_id))
    if parsed is None:
        return
    from tasks import services

    reason = (
        f"hard time limit ({exception})"
        if isinstance(exception, TimeLimitExceeded)
        else str(exception) or type(exception).__name__
    )
    try:
        task = services.task_fail_lost_run(task_id=parsed[0], attempt=parsed[1], reason=reason)
    except Exception:
        logger.exception("could not record the lost run of %s", task_id)
        return
    finally:
        connections.close_all()
    if task is not None:
        logger.warning("task %s in_progress -> %s: %s", parsed[0], task.status, reason)
