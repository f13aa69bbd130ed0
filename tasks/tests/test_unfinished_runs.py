"""A run that ends without an outcome of its own (a signal, a stopped or restarted worker, a
lost process, the reaper) is ended by one rule, services.task_end_unfinished_run:
cancelled if a cancel was asked, else failed and retryable; in one locked step; for its
own attempt only. And a run's outcome is its attempt's: a late write never ends a retry."""

from __future__ import annotations

import pytest

from tasks import services
from tasks.models import StopRequest, Task, TaskStatus
from tasks.tests.factories import make_task
from tasks.tests.row_lock import RowLock

KINDS = {
    "revoked_too_late": "tasks.tests.test_unfinished_runs.revoked_too_late",
    "outlived": "tasks.tests.test_unfinished_runs.outlived",
    "cancelled_while_stopping": "tasks.tests.test_unfinished_runs.cancelled_while_stopping",
}


@pytest.fixture(autouse=True)
def kinds(settings):
    settings.TASKHUB_TASK_PROCESSORS = {**settings.TASKHUB_TASK_PROCESSORS, **KINDS}


def run(owner, kind: str) -> Task:
    return make_task(owner=owner, kind=kind, status=TaskStatus.QUEUED)


@pytest.mark.django_db
def test_a_cold_shutdown_records_a_cancel_asked_for_as_cancelled(alice):
    revoked = make_task(
        owner=alice,
        status=TaskStatus.IN_PROGRESS,
        worker="celery@a",
        stop_requested=StopRequest.CANCEL,
        error=services.REVOKED_FROM_CLI,
    )
    plain = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, worker="celery@a")

    assert services.tasks_interrupt_on_worker(worker="celery@a") == 2

    revoked.refresh_from_db()
    plain.refresh_from_db()
    assert (revoked.status, revoked.error) == (TaskStatus.CANCELLED, services.REVOKED_FROM_CLI)
    assert (plain.status, plain.error) == (TaskStatus.FAILED, services.INTERRUPTED_BY_SHUTDOWN)


@pytest.mark.django_db
def test_a_worker_stopping_does_not_turn_a_cancel_request_into_a_shutdown(alice):
    cancel_asked = make_task(
        owner=alice,
        status=TaskStatus.IN_PROGRESS,
        worker="celery@a",
        stop_requested=StopRequest.CANCEL,
    )

    services.tasks_request_stop_on_worker(worker="celery@a")

    cancel_asked.refresh_from_db()
    assert cancel_asked.stop_requested == StopRequest.CANCEL


def revoked_too_late(ctx) -> dict:
    """A revoke from the celery CLI comes in while it runs, and it returns before any
    checkpoint could stop it."""
    services.task_revoke(task_id=ctx.task.pk, attempt=ctx.task.attempts)
    return {"finished": True}


@pytest.mark.django_db
def test_a_run_that_completes_after_a_revoke_keeps_no_revoke_reason(alice):
    task = run(alice, "revoked_too_late")

    services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert (task.status, task.result, task.error) == (
        TaskStatus.COMPLETED,
        {"finished": True},
        "",
    )


def outlived(ctx) -> dict:
    """While it runs, its run is ended by someone else (the reaper: its deadline passed
    while its outcome write waited out an outage, say), retried, and attempt 2 starts on
    another worker; then attempt 1 returns."""
    task_id = ctx.task.pk
    services.task_end_unfinished_run(task_id=task_id, attempt=1, error=services.WORKER_LOST)
    services.task_retry(task=Task.objects.get(pk=task_id))
    Task.objects.filter(pk=task_id).update(status=TaskStatus.QUEUED)
    services.task_start(task_id=task_id, worker="other@host")
    return {"from": "attempt 1"}


@pytest.mark.django_db
def test_an_outcome_written_late_never_ends_the_next_attempt(alice):
    task = run(alice, "outlived")

    assert services.task_run(task_id=task.pk, worker="test@host") is None

    task.refresh_from_db()
    assert (task.status, task.attempts, task.worker, task.result) == (
        TaskStatus.IN_PROGRESS,
        2,
        "other@host",
        None,
    )


@pytest.mark.django_db
def test_ending_a_run_leaves_other_attempts_and_finished_tasks_alone(alice):
    retried = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, attempts=2)
    done = make_task(owner=alice, status=TaskStatus.COMPLETED)

    assert services.task_end_unfinished_run(task_id=retried.pk, attempt=1, error="x") is None
    assert services.task_end_unfinished_run(task_id=done.pk, error="x") is None
    assert services.task_complete(task_id=retried.pk, result={}, attempt=1) is None

    assert Task.objects.get(pk=retried.pk).status == TaskStatus.IN_PROGRESS
    assert Task.objects.get(pk=done.pk).status == TaskStatus.COMPLETED


def cancelled_while_stopping(ctx) -> dict:
    """Ended by SIGTERM (billiard's SystemExit) while a cancel request is being written by
    another session: it commits only once the runner's record waits for the row."""
    lock = RowLock(ctx.task.pk)
    lock.when_waited_for(
        lock.write(
            "UPDATE tasks_task SET stop_requested = %s WHERE id = %s",
            [StopRequest.CANCEL.value, str(ctx.task.pk)],
        )
    )
    LOCKS.append(lock)
    raise SystemExit(15 - 256)


LOCKS: list[RowLock] = []


@pytest.mark.django_db(transaction=True)  # the lock holder's own connection
def test_a_cancel_that_lands_while_a_stopped_run_is_recorded_wins(alice):
    task = run(alice, "cancelled_while_stopping")

    try:
        with pytest.raises(SystemExit):
            services.task_run(task_id=task.pk, worker="test@host")
    finally:
        for lock in LOCKS:
            lock.__exit__(None, None, None)
        LOCKS.clear()

    task.refresh_from_db()
    # The check read the row under its lock: it saw the cancel, not the state before it.
    assert task.status == TaskStatus.CANCELLED
