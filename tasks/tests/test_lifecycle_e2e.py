"""A real Celery worker process runs tasks and the rows go through their statuses.

These start `celery -A taskhub worker` (and beat) on the test database, as production does,
and look only at what a user or operator would: the task row and its events.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import drop_pending_messages, status_of, statuses_seen, wait_for_status
from devserver import testing
from tasks import services
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STUBBORN = "stubborn=tasks.tests.processors.stubborn"


def test_a_worker_runs_a_task_through_every_status(alice, celery_worker_process):
    task = services.task_create(
        owner=alice, title="Resize photos", params={"seconds": 1, "steps": 4}
    )

    wait_for_status(task, TaskStatus.COMPLETED)

    assert statuses_seen(task) == ["pending", "queued", "in_progress", "completed"]
    assert task.progress == 100
    assert task.result == {"steps": 4, "seconds": 1, "message": "simulated 4 steps"}
    assert task.queued_at <= task.started_at <= task.finished_at


def test_builtin_kinds_do_their_work(alice, celery_worker_process):
    echo = services.task_create(owner=alice, title="echo", kind="echo", params={"a": [1, 2]})
    count = services.task_create(
        owner=alice, title="count", kind="wordcount", description="the cat and the hat\nthe end"
    )

    wait_for_status(echo, TaskStatus.COMPLETED)
    wait_for_status(count, TaskStatus.COMPLETED)

    assert echo.result == {"a": [1, 2]}
    assert count.result["words"] == 7
    assert count.result["lines"] == 2
    assert count.result["top_words"][0] == ["the", 3]


def test_a_failing_processor_fails_the_task_with_its_error(alice, celery_worker_process):
    task = services.task_create(
        owner=alice, title="doomed", params={"seconds": 0.2, "steps": 2, "fail_at_step": 1}
    )

    wait_for_status(task, TaskStatus.FAILED)

    assert "simulated failure at step 1" in task.error


def test_a_task_over_its_time_limit_fails_saying_it_timed_out(alice, celery_worker_process):
    task = services.task_create(
        owner=alice, title="slow", timeout=1, params={"seconds": 20, "steps": 4}
    )

    wait_for_status(task, TaskStatus.FAILED, timeout=20)

    assert task.error == "timed out after 1 s"


def test_cancel_of_a_running_task_stops_it(alice, celery_worker_process):
    task = services.task_create(owner=alice, title="long", params={"seconds": 30, "steps": 30})
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    services.task_cancel(task=task)

    wait_for_status(task, TaskStatus.CANCELLED, timeout=10)
    assert statuses_seen(task)[-2:] == ["in_progress", "cancelled"]


def test_retry_runs_a_cancelled_task_again_to_completion(alice, transactional_db, purge_broker):
    # Cancelled before any worker could take it: the worker starts only after the cancel,
    # so the cancel cannot race a run, and with the create's dispatch message dropped only
    # the retry can get the task run.
    task = services.task_create(owner=alice, title="again", params={"seconds": 0.2, "steps": 2})
    services.task_cancel(task=task)
    assert status_of(task) == TaskStatus.CANCELLED
    drop_pending_messages()
    worker = testing.start_worker()
    try:
        services.task_retry(task=task)

        wait_for_status(task, TaskStatus.COMPLETED)
    finally:
        worker.stop()
    assert task.attempts == 2
    assert statuses_seen(task) == [
        "pending", "cancelled", "pending", "queued", "in_progress", "completed"
    ]  # fmt: skip


def test_sigterm_mid_task_leaves_no_task_in_progress(alice, transactional_db, purge_broker):
    worker = testing.start_worker()
    task = services.task_create(owner=alice, title="long", params={"seconds": 60, "steps": 60})
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    exit_code = worker.stop(signal.SIGTERM, timeout=30)

    assert exit_code == 0, worker.output[-3000:]
    assert status_of(task) == TaskStatus.FAILED
    assert "interrupted by worker shutdown" in task.error
    assert not Task.objects.filter(status=TaskStatus.IN_PROGRESS).exists()


def test_sigterm_ends_even_a_processor_that_never_checks_in(
    alice, transactional_db, purge_broker, stubborn_kind
):
    worker = testing.start_worker(
        extra_env={"TASK_PROCESSORS": STUBBORN, "WORKER_SHUTDOWN_GRACE": "2"}
    )
    task = services.task_create(owner=alice, title="deaf", kind="stubborn", params={"seconds": 120})
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    exit_code = worker.stop(signal.SIGTERM, timeout=30)

    # It exits by itself after the grace; stop() would SIGKILL it (-9) if it hung.
    assert exit_code == 0, worker.output[-3000:]
    assert status_of(task) == TaskStatus.FAILED, worker.output[-3000:]
    assert "interrupted by worker shutdown" in task.error


def test_after_a_sigkill_the_reaper_ends_the_orphaned_task(
    alice, transactional_db, purge_broker, stubborn_kind, tmp_path: Path
):
    env = {"TASK_PROCESSORS": STUBBORN, "REAPER_INTERVAL": "1", "REAPER_GRACE": "1"}
    doomed = testing.start_worker(extra_env=env)
    task = services.task_create(
        owner=alice, title="orphan", kind="stubborn", timeout=2, params={"seconds": 120}
    )
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    doomed.kill_group()
    assert status_of(task) == TaskStatus.IN_PROGRESS

    started: list[testing.ManagedProcess] = []
    try:
        started.append(testing.start_worker(extra_env=env))
        started.append(testing.start_beat(extra_env=env, schedule_dir=tmp_path))
        wait_for_status(task, TaskStatus.FAILED, timeout=30)
    finally:
        for process in reversed(started):
            process.stop()
    assert "stopped responding" in task.error


def test_a_worker_restarted_after_a_crash_closes_out_what_it_was_running(
    alice, transactional_db, purge_broker, stubborn_kind
):
    env = {"TASK_PROCESSORS": STUBBORN}
    node = "restarting@test"
    crashed = testing.start_worker(extra_env=env, node=node)
    task = services.task_create(
        owner=alice, title="interrupted", kind="stubborn", params={"seconds": 120}
    )
    wait_for_status(task, TaskStatus.IN_PROGRESS)
    crashed.kill_group()

    restarted = testing.start_worker(extra_env=env, node=node)
    try:
        wait_for_status(task, TaskStatus.FAILED, timeout=15)
    finally:
        restarted.stop()
    assert "was restarted" in task.error


def test_a_new_task_is_queued_at_once_while_every_worker_slot_is_busy(
    alice, transactional_db, purge_broker, stubborn_kind
):
    # As `make run` and docker-compose run them: run messages and the dispatcher on
    # separate workers, so a full pool does not hold back dispatching.
    env = {"TASK_PROCESSORS": STUBBORN, "WORKER_SHUTDOWN_GRACE": "1"}
    started = [testing.start_worker(extra_env=env, concurrency=1, queues="celery")]
    try:
        started.append(testing.start_worker(extra_env=env, concurrency=1, queues="dispatch"))
        busy = services.task_create(
            owner=alice, title="hogs the only slot", kind="stubborn", params={"seconds": 60}
        )
        wait_for_status(busy, TaskStatus.IN_PROGRESS)

        waiting = services.task_create(owner=alice, title="next in line", kind="echo")

        wait_for_status(waiting, TaskStatus.QUEUED, timeout=10)
        assert status_of(busy) == TaskStatus.IN_PROGRESS
    finally:
        for process in reversed(started):
            process.stop()
