"""tasks.services promises the mutation check (docs/mutation.md) found untested: what a
transition leaves on the row besides its status, what a cancel and a retry tell the rest
of the system, and where progress and result sizes are cut off."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from taskhub.exceptions import ConflictError
from tasks import queue, services
from tasks.models import TERMINAL_STATUSES, StopRequest, Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def test_exactly_completed_failed_and_cancelled_are_terminal():
    assert {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED} == TERMINAL_STATUSES
    assert [status for status in TaskStatus.values if Task(status=status).is_terminal] == [
        "completed",
        "failed",
        "cancelled",
    ]


# --- What a transition leaves on the row ---------------------------------------------------


def test_completing_stores_the_result_full_progress_and_the_finish_time(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, progress=30)
    before = timezone.now()

    services.task_complete(task_id=task.pk, result={"rows": 3})

    task.refresh_from_db()
    assert task.status == TaskStatus.COMPLETED
    assert task.result == {"rows": 3}
    assert task.progress == 100
    assert task.finished_at is not None and task.finished_at >= before


def test_failing_keeps_the_error_and_the_finish_time(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)
    before = timezone.now()

    services.task_fail(task_id=task.pk, error="x" * 6000)

    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert task.error == "x" * 5000
    assert task.finished_at is not None and task.finished_at >= before


def test_a_cancel_says_why_its_reason_then_a_stop_requests_then_on_request(alice):
    plain = make_task(owner=alice)
    with_reason = make_task(owner=alice)
    # What task_revoke leaves on a running task: a cancel request and its reason.
    revoked = make_task(
        owner=alice,
        status=TaskStatus.IN_PROGRESS,
        error="revoked from the cli",
        stop_requested=StopRequest.CANCEL,
    )

    services.task_mark_cancelled(task_id=plain.pk)
    services.task_mark_cancelled(task_id=with_reason.pk, reason="operator said so")
    services.task_mark_cancelled(task_id=revoked.pk)

    for task in (plain, with_reason, revoked):
        task.refresh_from_db()
        assert task.status == TaskStatus.CANCELLED
        assert task.finished_at is not None
    assert plain.error == services.CANCELLED_ON_REQUEST == "cancelled on request"
    assert with_reason.error == "operator said so"
    assert revoked.error == "revoked from the cli"


# --- Progress ------------------------------------------------------------------------------


@pytest.fixture
def progress_pushes(monkeypatch):
    """The task.progress pushes task_report_progress hands to notifications, kept here."""
    pushes: list[dict] = []
    monkeypatch.setattr(services, "publish_ephemeral", lambda **push: pushes.append(push))
    return pushes


@pytest.mark.parametrize(
    ("reported", "stored"), [(-5, 0), (0, 0), (55, 55), (100, 100), (250, 100)]
)
def test_progress_is_kept_within_0_and_100(alice, progress_pushes, reported, stored):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, progress=7)

    services.task_report_progress(task=task, progress=reported)

    task.refresh_from_db()
    assert task.progress == stored
    assert [push["data"]["progress"] for push in progress_pushes] == [stored]


def test_progress_tells_the_owner_what_was_stored(alice, progress_pushes):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)

    services.task_report_progress(task=task, progress=42.9)

    assert progress_pushes == [
        {
            "user_id": alice.pk,
            "type": "task.progress",
            "data": {"task_id": str(task.pk), "progress": 42, "status": "in_progress"},
        }
    ]


def test_progress_of_a_task_not_running_is_neither_stored_nor_pushed(alice, progress_pushes):
    task = make_task(owner=alice, status=TaskStatus.COMPLETED, progress=100)

    services.task_report_progress(task=task, progress=10)

    task.refresh_from_db()
    assert task.progress == 100
    assert progress_pushes == []


def test_progress_of_an_anonymous_task_is_stored_and_pushed_to_nobody(progress_pushes):
    task = make_task(owner=None, status=TaskStatus.IN_PROGRESS)

    services.task_report_progress(task=task, progress=60)

    task.refresh_from_db()
    assert task.progress == 60
    assert progress_pushes == []


def test_progress_moves_the_tasks_updated_at(alice, progress_pushes):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)
    before = Task.objects.get(pk=task.pk).updated_at

    services.task_report_progress(task=task, progress=50)

    assert Task.objects.get(pk=task.pk).updated_at > before


def test_progress_reaches_the_owners_cached_list_and_detail(
    alice, progress_pushes, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)
    client = APIClient()
    client.force_authenticate(user=alice)
    assert client.get("/api/tasks/").json()["results"][0]["progress"] == 0
    assert client.get(f"/api/tasks/{task.pk}/").json()["progress"] == 0

    with django_capture_on_commit_callbacks(execute=True):
        services.task_report_progress(task=task, progress=40)

    assert client.get("/api/tasks/").json()["results"][0]["progress"] == 40
    assert client.get(f"/api/tasks/{task.pk}/").json()["progress"] == 40


# --- Results ---------------------------------------------------------------------------------


def test_a_result_of_exactly_the_limit_is_kept_and_one_byte_more_is_refused(settings):
    result = {"text": "x" * 2000}
    size = len(json.dumps(result))
    settings.TASKHUB_TASK_MAX_RESULT_BYTES = size

    services.task_result_check(result)
    with pytest.raises(services.ResultRefused) as refused:
        services.task_result_check({"text": "x" * 2001})
    assert str(refused.value) == f"result is {size + 1} bytes of JSON; at most {size} are kept"


def test_a_result_with_nan_is_refused_before_the_database_sees_it():
    with pytest.raises(services.ResultRefused) as refused:
        services.task_result_check({"ratio": float("nan")})
    assert str(refused.value).startswith("result is not JSON: ")


# --- Cancel ----------------------------------------------------------------------------------


@pytest.fixture
def revokes(monkeypatch):
    """The revoke broadcasts a cancel sends after commit, kept instead of going to Celery."""
    sent: list[tuple] = []
    monkeypatch.setattr(queue, "revoke_run_message", lambda *args: sent.append(args))
    return sent


def test_cancelling_a_running_task_revokes_its_current_attempt_after_commit(
    alice, revokes, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, attempts=3)
    before = Task.objects.get(pk=task.pk).updated_at

    with django_capture_on_commit_callbacks(execute=True):
        services.task_cancel(task=task)
        assert revokes == []

    assert revokes == [(task.pk, 3)]
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == TaskStatus.IN_PROGRESS
    assert stored.stop_requested == StopRequest.CANCEL
    assert stored.updated_at > before


def test_cancelling_a_task_not_started_sends_no_revoke(
    alice, revokes, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, status=TaskStatus.QUEUED)

    with django_capture_on_commit_callbacks(execute=True):
        services.task_cancel(task=task)

    assert revokes == []


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
def test_cancelling_a_finished_task_says_it_is_already_finished(alice, status, revokes):
    task = make_task(owner=alice, status=status)

    with pytest.raises(ConflictError) as conflict:
        services.task_cancel(task=task)

    assert str(conflict.value) == (
        f"Task is already {status}; only an unfinished task can be cancelled."
    )
    assert Task.objects.get(pk=task.pk).stop_requested == StopRequest.NONE


# --- Retry -----------------------------------------------------------------------------------


def test_a_retry_clears_everything_the_previous_run_left(alice, django_capture_on_commit_callbacks):
    now = timezone.now()
    task = make_task(
        owner=alice,
        status=TaskStatus.CANCELLED,
        progress=80,
        result={"partial": True},
        error="cancelled on request",
        stop_requested=StopRequest.CANCEL,
        worker="celery@old",
        queued_at=now,
        started_at=now,
        finished_at=now,
        attempts=2,
    )

    with django_capture_on_commit_callbacks() as callbacks:
        retried = services.task_retry(task=task)

    stored = Task.objects.get(pk=task.pk)
    for row in (retried, stored):
        assert row.status == TaskStatus.PENDING
        assert row.attempts == 3
        assert (row.progress, row.result, row.error) == (0, None, "")
        assert (row.stop_requested, row.worker) == (StopRequest.NONE, "")
        assert (row.queued_at, row.started_at, row.finished_at) == (None, None, None)
    assert services.nudge_dispatcher in callbacks


def test_a_retry_of_a_task_that_did_not_fail_says_its_status(alice):
    task = make_task(owner=alice, status=TaskStatus.COMPLETED)

    with pytest.raises(ConflictError) as conflict:
        services.task_retry(task=task)

    assert str(conflict.value) == (
        "Task is completed; only a failed or cancelled task can be retried."
    )


# --- A run the worker ends -------------------------------------------------------------------


def exits(ctx):
    """A processor whose pool process is ended by a signal (billiard turns signal N into
    SystemExit(N - 256)) or that calls sys.exit itself; the revoke from the celery CLI
    asks for a cancel before it terminates, which `cancel_first` plays."""
    if ctx.params.get("cancel_first"):
        Task.objects.filter(pk=ctx.task.pk).update(stop_requested=StopRequest.CANCEL)
    raise SystemExit(ctx.params["code"])


@pytest.fixture
def exiting_kind(settings):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "exits": "tasks.tests.test_services_mutants.exits",
    }


def run_exiting(owner, **params) -> Task:
    return make_task(owner=owner, kind="exits", params=params, status=TaskStatus.QUEUED)


# Signal 1 (SIGHUP) to 63 (the last real-time one); SIGTERM (15) is what terminate sends.
@pytest.mark.parametrize("signum", [1, 15, 63])
def test_a_run_ended_by_a_signal_is_recorded_interrupted_and_the_exit_goes_on(
    alice, exiting_kind, signum
):
    task = run_exiting(alice, code=signum - 256)
    other = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, stop_requested="cancel")

    with pytest.raises(SystemExit):
        services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert (task.status, task.error) == (TaskStatus.FAILED, services.INTERRUPTED_BY_SHUTDOWN)
    # Another task's cancel request is not this one's.
    assert Task.objects.get(pk=other.pk).status == TaskStatus.IN_PROGRESS


def test_a_run_ended_by_a_signal_after_a_cancel_request_is_cancelled(alice, exiting_kind):
    task = run_exiting(alice, code=15 - 256, cancel_first=True)

    with pytest.raises(SystemExit):
        services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELLED


@pytest.mark.parametrize("code", [-256, -192, 0, 3])
def test_an_exit_code_no_signal_gives_is_the_processors_own_failure(alice, exiting_kind, code):
    task = run_exiting(alice, code=code)

    services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert (task.status, task.error) == (TaskStatus.FAILED, f"SystemExit: {code}")


def reports_progress(ctx):
    """Reports 60% and returns what the task's row said right after."""
    ctx.report_progress(60)
    return {"stored": Task.objects.get(pk=ctx.task.pk).progress}


def test_a_processors_progress_report_is_stored_while_it_runs(alice, settings):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "reports_progress": "tasks.tests.test_services_mutants.reports_progress",
    }
    task = make_task(owner=alice, kind="reports_progress", status=TaskStatus.QUEUED)

    services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.COMPLETED, {"stored": 60})


def returns_nul(ctx):
    """Strict JSON that PostgreSQL's jsonb still refuses: a NUL character in a string."""
    return {"text": "a\x00b"}


@pytest.mark.django_db(transaction=True)  # the runner closes the connection on this path
def test_a_result_the_database_refuses_fails_the_task_at_once_saying_so(alice, settings):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "returns_nul": "tasks.tests.test_services_mutants.returns_nul",
    }
    task = make_task(owner=alice, kind="returns_nul", status=TaskStatus.QUEUED)

    services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert task.error.startswith("recording the result failed: ")
    assert task.result is None


# --- Worker shutdown and the reaper ----------------------------------------------------------


def test_a_stopping_worker_asks_only_its_own_running_tasks_to_stop(alice):
    mine = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, worker="celery@a")
    theirs = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, worker="celery@b")
    queued = make_task(owner=alice, status=TaskStatus.QUEUED, worker="celery@a")
    before = Task.objects.get(pk=mine.pk).updated_at

    assert services.tasks_request_stop_on_worker(worker="celery@a") == 1

    stored = {task.pk: task for task in Task.objects.all()}
    assert stored[mine.pk].stop_requested == StopRequest.SHUTDOWN
    assert stored[mine.pk].updated_at > before
    assert stored[theirs.pk].stop_requested == StopRequest.NONE
    assert stored[queued.pk].stop_requested == StopRequest.NONE


def test_a_stopped_worker_fails_only_its_own_running_tasks_retryably(alice):
    mine = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, worker="celery@a")
    theirs = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, worker="celery@b")
    done = make_task(owner=alice, status=TaskStatus.COMPLETED, worker="celery@a")

    assert services.tasks_interrupt_on_worker(worker="celery@a") == 1
    assert services.tasks_interrupt_on_worker(worker="celery@b", error="restarted") == 1

    stored = {task.pk: task for task in Task.objects.all()}
    assert (stored[mine.pk].status, stored[mine.pk].error) == (
        TaskStatus.FAILED,
        services.INTERRUPTED_BY_SHUTDOWN,
    )
    assert (stored[theirs.pk].status, stored[theirs.pk].error) == (TaskStatus.FAILED, "restarted")
    assert stored[done.pk].status == TaskStatus.COMPLETED


def test_the_reaper_ends_only_runs_past_their_deadline_and_grace(alice, settings):
    settings.TASKHUB_REAPER_GRACE = 30
    now = timezone.now()

    def running(seconds_ago: float | None, **fields) -> Task:
        started = None if seconds_ago is None else now - timedelta(seconds=seconds_ago)
        return make_task(
            owner=alice, status=TaskStatus.IN_PROGRESS, timeout=60, started_at=started, **fields
        )

    lost = running(60 + 30 + 5)
    cancel_asked = running(60 + 30 + 5, stop_requested=StopRequest.CANCEL)
    within_grace = running(60 + 30 - 5)
    never_started = running(None)
    finished = make_task(
        owner=alice, status=TaskStatus.FAILED, timeout=60, started_at=now - timedelta(hours=1)
    )

    assert services.reap_stalled_tasks() == 2

    stored = {task.pk: task for task in Task.objects.all()}
    assert (stored[lost.pk].status, stored[lost.pk].error) == (
        TaskStatus.FAILED,
        services.WORKER_LOST,
    )
    assert stored[cancel_asked.pk].status == TaskStatus.CANCELLED
    assert stored[within_grace.pk].status == TaskStatus.IN_PROGRESS
    assert stored[never_started.pk].status == TaskStatus.IN_PROGRESS
    assert stored[finished.pk].status == TaskStatus.FAILED
    assert services.reap_stalled_tasks() == 0
