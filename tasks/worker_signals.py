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

PostgreSQL down. Both paths run in the worker's main process, whose loop also consumes
and heartbeats, so neither may wait for a database that does not answer (a connection
waits up to DB_POOL_TIMEOUT, 10 s, per try). Their writes run in a thread of their own
and are waited for a bounded time: the shutdown's steps SHUTDOWN_RECORD_WAIT_SECONDS each,
its grace timer starts whether or not the stop request could be written, and it sends the
cold shutdown even when nothing could be recorded; a revoke RECORD_WAIT_SECONDS (not at
all while this process knows PostgreSQL is down), then replies saying TaskHub did not
record it, and Celery's own revoke still does its part. A write that comes late still
lands; what never does is closed out when the worker restarts under the same name, or by
the reaper.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

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
from celery.worker import state as worker_state
from celery.worker.control import Panel
from django.conf import settings
from django.db import close_old_connections, connections

from taskhub import outages
from tasks import queue

logger = logging.getLogger("tasks")

T = TypeVar("T")

# `celery control revoke|terminate` waits 1 s (its --timeout) for the workers' replies: a
# revoke records in TaskHub within this, or replies without waiting any longer.
RECORD_WAIT_SECONDS = 0.8
# A shutdown step waits this long for its write, then goes on without it: the grace, not
# the database's pool timeout, bounds a SIGTERM.
SHUTDOWN_RECORD_WAIT_SECONDS = 2.0


class _NotRecorded(Exception):
    """A write did not end in time, or failed (logged already)."""


def _in_background(work: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run `work` (database writes) in a thread of its own, so the caller can stop
    waiting for it; the thread's connections are closed when it is done."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            connections.close_all()

    threading.Thread(target=run, name="taskhub-record", daemon=True).start()
    return future


def _within(seconds: float, work: Callable[[], T], what: str, consequence: str) -> T:
    """work()'s result if it ends within `seconds`, else _NotRecorded. It runs on in its
    thread (a late write still lands, and its new connection is how this process sees a
    database outage end). A failure is logged: an outage as its one line (taskhub/outages.py,
    with `consequence`), anything else with its traceback."""
    future = _in_background(work)
    try:
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        logger.warning("could not %s within %s s: %s", what, seconds, consequence)
        future.add_done_callback(
            lambda done: done.exception() and _log_failure(done.exception(), what, consequence)
        )
        raise _NotRecorded from None
    except Exception as exc:
        _log_failure(exc, what, consequence)
        raise _NotRecorded from exc


def _log_failure(exc: BaseException, what: str, consequence: str) -> None:
    if outages.is_database_outage(exc):
        outages.DATABASE.failed(exc, consequence)
    else:
        logger.error("could not %s", what, exc_info=exc)


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
        asked: int | None = _within(
            SHUTDOWN_RECORD_WAIT_SECONDS,
            lambda: services.tasks_request_stop_on_worker(worker=worker),
            "ask running tasks to stop",
            "the shutdown ends them after the grace, unrecorded",
        )
    except _NotRecorded:
        asked = None
    running = len(worker_state.active_requests)
    logger.warning(
        "worker %s shutting down (%s): %s running task(s), %s",
        worker,
        sig,
        running,
        "could not ask them to stop" if asked is None else f"asked {asked} to stop",
    )
    # The grace bounds the wait whenever something may still run: a request in flight, or a
    # stop request that could not be written (the runs do not know they should stop).
    if asked or asked is None or running:
        timer = threading.Timer(
            settings.TASKHUB_WORKER_SHUTDOWN_GRACE, _end_the_wait, args=(worker,)
        )
        timer.daemon = True
        timer.start()


def _record_cold_shutdown(worker: str, sig: str) -> None:
    """Celery is about to end the pool's processes mid-task: record their tasks now
    (failed and retryable, or cancelled) rather than leave them to a restart of this worker
    or the reaper."""
    from tasks import services

    try:
        interrupted = _within(
            SHUTDOWN_RECORD_WAIT_SECONDS,
            lambda: services.tasks_interrupt_on_worker(worker=worker),
            f"record the tasks of {worker} at its cold shutdown",
            "its restart or the reaper records them",
        )
    except _NotRecorded:
        return
    logger.warning(
        "worker %s cold shutdown (%s): %s running task(s) recorded", worker, sig, interrupted
    )


def _end_the_wait(worker: str) -> None:
    """The grace is over: record what still runs, and move on to a cold shutdown if
    anything does or nothing could be recorded. Never raises (_within logs): an exception
    here would end the timer's thread before the SIGQUIT, and the warm shutdown would wait
    for the pool's children as long as they run."""
    from tasks import services

    try:
        interrupted: int | None = _within(
            SHUTDOWN_RECORD_WAIT_SECONDS,
            lambda: services.tasks_interrupt_on_worker(worker=worker),
            f"record the tasks of {worker} at the end of its grace",
            "its restart or the reaper records them",
        )
    except _NotRecorded:
        interrupted = None
    running = len(worker_state.active_requests)
    if interrupted or interrupted is None or running:
        logger.warning(
            "worker %s: %s task(s) did not stop in time (%s); cold shutdown",
            worker,
            running,
            "not recorded" if interrupted is None else f"{interrupted} recorded",
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


def _record_revokes(runs: list[tuple[str, tuple]]) -> tuple[set[str], list[str]]:
    """services.task_revoke for each (given id, parsed id): the Celery ids of the runs
    found, and what was done for each, in words for the CLI's reply."""
    from tasks import services

    celery_ids: set[str] = set()
    outcomes: list[str] = []
    for given, (task_id, attempt) in runs:
        try:
            task, outcome = services.task_revoke(task_id=task_id, attempt=attempt)
        except Exception as exc:
            _log_failure(
                exc,
                f"record the revoke of {given}",
                "revokes from the celery CLI are not recorded in TaskHub",
            )
            outcomes.append(f"{given}: not recorded in TaskHub (see the worker's log)")
            continue
        if task is not None:
            # A bare id names the task; Celery knows its run by the attempt's id.
            celery_ids.add(queue.run_message_id(task.pk, attempt or task.attempts))
            logger.warning(
                "task %s %s (%s): %s", task.pk, services.REVOKED_FROM_CLI, given, outcome
            )
        outcomes.append(f"{given}: {outcome}")
    return celery_ids, outcomes


def _revoke(state, task_id, terminate=False, signal=None, **kwargs):
    """Celery's `revoke` control command, TaskHub's state first (module docstring)."""
    if kwargs.pop(queue.TASKHUB_CANCEL, False):
        return _celery_revoke(state, task_id, terminate=terminate, signal=signal, **kwargs)

    given_ids = list(maybe_list(task_id) or [])
    celery_ids: set[str] = set(given_ids)
    runs = [(given, parsed) for given in given_ids if (parsed := queue.parse_run_message_id(given))]
    outcomes: list[str] = []
    if runs:
        try:
            # Not a moment's wait while this process knows PostgreSQL is down: the pidbox
            # runs in the loop that consumes and heartbeats. The write is tried all the same.
            found, outcomes = _within(
                0 if outages.DATABASE.down else RECORD_WAIT_SECONDS,
                lambda: _record_revokes(runs),
                f"record the revoke of {', '.join(given for given, _ in runs)}",
                "Celery's revoke only; TaskHub records it if the database answers later",
            )
            celery_ids |= found
        except _NotRecorded:
            outcomes = [
                f"{given}: not recorded in TaskHub (PostgreSQL did not answer; the worker's "
                "log says if it is later); Celery's revoke only"
                for given, _ in runs
            ]
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
    signum = kwargs.get("signum")

    def record() -> None:
        try:
            _task, outcome = services.task_revoke(
                task_id=parsed[0], attempt=parsed[1], terminated=True
            )
        except Exception as exc:
            _log_failure(
                exc,
                f"record the termination of {parsed[0]}",
                "terminated runs are left to the worker's restart or the reaper",
            )
            return
        logger.warning(
            "task %s terminated from the celery CLI (signal %s): %s", parsed[0], signum, outcome
        )

    # Sent in the main loop's thread, and nothing waits for the outcome: write it aside.
    _in_background(record)


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
