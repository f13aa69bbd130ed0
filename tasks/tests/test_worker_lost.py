"""A pool process killed mid-run (SIGKILL, the OOM killer) is recorded at once by its
worker's main process, from Celery's own WorkerLostError, not minutes later by the reaper
(issue 13, R1). No beat runs here, so no reaper can be the one that records it."""

from __future__ import annotations

import signal

import psutil
import pytest

from conftest import statuses_seen, wait_for_status
from devserver import testing
from tasks import services
from tasks.models import TERMINAL_STATUSES, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def kill_pool_children(worker: testing.ManagedProcess) -> int:
    children = psutil.Process(worker.proc.pid).children()
    for child in children:
        child.send_signal(signal.SIGKILL)
    return len(children)


def test_a_run_whose_pool_process_is_sigkilled_is_recorded_failed_and_retryable(alice):
    worker = testing.start_worker(concurrency=1)
    try:
        task = services.task_create(
            owner=alice, title="long", params={"seconds": 600, "steps": 600}
        )
        wait_for_status(task, TaskStatus.IN_PROGRESS, timeout=60)

        assert kill_pool_children(worker) == 1

        # A bound, not a speed claim: without the main process's record it would wait for
        # the reaper (timeout + REAPER_GRACE), which never comes here.
        wait_for_status(task, TaskStatus.FAILED, timeout=60)
        assert "died" in task.error and "SIGKILL" in task.error
        assert statuses_seen(task) == ["pending", "queued", "in_progress", "failed"]

        # Retryable: the worker's new pool process runs attempt 2, and a kill of that
        # one is recorded the same way, once.
        services.task_retry(task=task)
        wait_for_status(task, TaskStatus.IN_PROGRESS, timeout=60)
        assert task.attempts == 2
        assert kill_pool_children(worker) == 1
        wait_for_status(task, TaskStatus.FAILED, timeout=60)
    finally:
        worker.stop()
    terminal = [status for status in statuses_seen(task) if status in TERMINAL_STATUSES]
    assert terminal == ["failed", "failed"]
