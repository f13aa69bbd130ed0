"""The celery CLI as an operator uses it (docs/operations.md), against a real worker.

Every command here is the real `celery -A taskhub …` program talking to a real worker
through the broker; the assertions read what TaskHub shows: the task row, its events, the
worker's log. One test per command docs/operations.md documents.
"""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import pytest

from conftest import status_of, statuses_seen, wait_for_status
from devserver import processes, testing
from devserver.testing import node_name
from tasks import services
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STUBBORN = {"TASK_PROCESSORS": "stubborn=tasks.tests.processors.stubborn"}


def celery(*args: str) -> str:
    """Run `celery -A taskhub <args>` as an operator would; its output (it must succeed)."""
    line = processes.Command("celery", ("-A", processes.CELERY_APP, *args))
    done = subprocess.run(
        line.argv(),
        cwd=testing.BASE_DIR,
        env=testing.process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def inspect_json(command: str, node: str) -> Any:
    """`celery inspect <command> -d <node> --json`: that worker's list."""
    replies = json.loads(celery("inspect", command, "-d", node, "--json", "--timeout", "5"))
    return replies[node]


@pytest.fixture
def worker(transactional_db, purge_broker, stubborn_kind):
    """One named worker on every queue, one slot: what runs is easy to predict."""
    started: list[testing.ManagedProcess] = []

    def start(node: str | None = None, **options) -> testing.ManagedProcess:
        options.setdefault("concurrency", 1)
        process = testing.start_worker(node=node or node_name("ops"), extra_env=STUBBORN, **options)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def node_of(process: testing.ManagedProcess) -> str:
    return process.args[process.args.index("-n") + 1]


def test_revoke_by_celery_id_cancels_a_queued_task_and_no_restarted_worker_runs_it(alice, worker):
    # Only the dispatcher consumes: the run message waits in the broker, as behind a busy
    # pool; the worker still answers control commands.
    dispatcher = worker(queues="dispatch")
    task = services.task_create(owner=alice, title="not wanted", kind="echo")
    wait_for_status(task, TaskStatus.QUEUED)

    reply = celery("control", "revoke", f"{task.pk}:1", "-d", node_of(dispatcher), "-t", "5")

    assert f"{task.pk}:1: cancelled" in reply
    assert status_of(task) == TaskStatus.CANCELLED
    assert task.error == "revoked from the celery CLI"
    assert statuses_seen(task) == ["pending", "queued", "cancelled"]
    dispatcher.wait_for_output(f"task {task.pk} revoked from the celery CLI")

    # A worker that never heard of the revoke (a restart forgets Celery's list) takes the
    # message, and TaskHub's state keeps the task from running; a later task, behind it in
    # the queue, shows the message was taken.
    fresh = worker(queues="celery")
    later = services.task_create(owner=alice, title="after it", kind="echo")
    wait_for_status(later, TaskStatus.COMPLETED)
    fresh.wait_for_output(f"task {task.pk} not queued any more; message ignored")
    assert status_of(task) == TaskStatus.CANCELLED
    assert task.started_at is None
    assert statuses_seen(task) == ["pending", "queued", "cancelled"]


def test_revoke_by_bare_task_id_stops_a_running_task_at_its_next_checkpoint(alice, worker):
    running = worker()
    task = services.task_create(owner=alice, title="long", params={"seconds": 60, "steps": 60})
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    reply = celery("control", "revoke", str(task.pk), "-d", node_of(running), "-t", "5")

    assert "cancel requested; it stops at its next checkpoint" in reply
    wait_for_status(task, TaskStatus.CANCELLED, timeout=15)
    assert task.error == "revoked from the celery CLI"
    assert statuses_seen(task)[-2:] == ["in_progress", "cancelled"]


@pytest.mark.parametrize("given", ["task id", "celery id"])
def test_terminate_sigterm_ends_a_task_that_never_checks_in_as_cancelled(alice, worker, given):
    running = worker()
    task = services.task_create(owner=alice, title="deaf", kind="stubborn", params={"seconds": 120})
    wait_for_status(task, TaskStatus.IN_PROGRESS)
    task_id = str(task.pk) if given == "task id" else f"{task.pk}:1"

    reply = celery("control", "terminate", "SIGTERM", task_id, "-d", node_of(running), "-t", "5")

    assert f"terminate: {task.pk}:1" in reply
    # Recorded by the worker that killed the process, not by the reaper minutes later.
    wait_for_status(task, TaskStatus.CANCELLED, timeout=10)
    assert task.error == "revoked from the celery CLI"
    assert statuses_seen(task)[-2:] == ["in_progress", "cancelled"]
    running.wait_for_output(f"task {task.pk} terminated from the celery CLI")
    # The pool replaced its process: the worker goes on running tasks.
    after = services.task_create(owner=alice, title="next", kind="echo")
    wait_for_status(after, TaskStatus.COMPLETED)


def test_a_revoke_of_an_earlier_attempt_leaves_the_retry_alone(alice, worker):
    dispatcher = worker(queues="dispatch")
    task = services.task_create(owner=alice, title="twice", kind="echo")
    services.task_cancel(task=task)
    services.task_retry(task=task)
    wait_for_status(task, TaskStatus.QUEUED)

    reply = celery("control", "revoke", f"{task.pk}:1", "-d", node_of(dispatcher), "-t", "5")

    assert "attempt 1 is over (the task is at attempt 2)" in reply
    assert status_of(task) == TaskStatus.QUEUED


def test_inspect_active_and_reserved_show_task_id_kind_owner_and_attempt(alice, worker):
    # The dispatcher on a worker of its own, so it queues while the only slot is busy.
    running = worker(queues="celery")
    worker(queues="dispatch")
    node = node_of(running)
    busy = services.task_create(owner=alice, title="busy", kind="stubborn", params={"seconds": 60})
    wait_for_status(busy, TaskStatus.IN_PROGRESS)
    waiting = services.task_create(owner=alice, title="waiting", kind="echo")
    wait_for_status(waiting, TaskStatus.QUEUED)

    [active] = inspect_json("active", node)
    # run_at is kept in PostgreSQL until due, never as a Celery ETA message.
    assert inspect_json("scheduled", node) == []
    reserved = testing.wait_until(lambda: inspect_json("reserved", node), message="a reserved")

    assert active["id"] == f"{busy.pk}:1"
    assert active["name"] == "tasks.run_task"
    assert active["args"] == [str(busy.pk)]
    assert active["kwargs"] == {"kind": "stubborn", "owner_id": alice.pk, "attempt": 1}
    assert [(r["args"], r["kwargs"]) for r in reserved] == [
        ([str(waiting.pk)], {"kind": "echo", "owner_id": alice.pk, "attempt": 1})
    ]
    celery("control", "terminate", "SIGKILL", str(busy.pk), "-d", node, "-t", "5")
    wait_for_status(busy, TaskStatus.CANCELLED, timeout=10)


def test_a_worker_answers_by_the_name_given_with_n(worker):
    node = node_name("billing")
    worker(node=node)

    assert f"{node}: OK" in celery("inspect", "ping", "-d", node, "-t", "5")


def test_draining_a_worker_lets_its_running_task_finish_and_takes_no_new_one(alice, worker):
    drained = worker(concurrency=2)
    node = node_of(drained)
    running = services.task_create(
        owner=alice, title="finishing", params={"seconds": 3, "steps": 3}
    )
    wait_for_status(running, TaskStatus.IN_PROGRESS)

    reply = celery("control", "cancel_consumer", "celery", "-d", node, "-t", "5")

    assert "no longer consuming from celery" in reply
    later = services.task_create(owner=alice, title="for another worker", kind="echo")
    wait_for_status(running, TaskStatus.COMPLETED)
    wait_for_status(later, TaskStatus.QUEUED)
    assert "celery" not in [queue["name"] for queue in inspect_json("active_queues", node)]
    assert status_of(later) == TaskStatus.QUEUED

    celery("control", "add_consumer", "celery", "-d", node, "-t", "5")

    wait_for_status(later, TaskStatus.COMPLETED)


def test_pool_grow_and_shrink_change_a_workers_concurrency(worker):
    node = node_of(worker(concurrency=1))

    def processes_in_pool() -> int:
        return len(inspect_json("stats", node)["pool"]["processes"])

    celery("control", "pool_grow", "1", "-d", node, "-t", "5")
    testing.wait_until(lambda: processes_in_pool() == 2, message="a second pool process")
    celery("control", "pool_shrink", "1", "-d", node, "-t", "5")
    testing.wait_until(lambda: processes_in_pool() == 1, message="back to one pool process")


def test_sigquit_records_the_running_task_failed_at_once(alice, worker):
    running = worker()
    task = services.task_create(owner=alice, title="cut", kind="stubborn", params={"seconds": 120})
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    running.stop(signal.SIGQUIT, timeout=30)

    # Recorded by the dying worker, not by the reaper or a restart.
    assert status_of(task) == TaskStatus.FAILED, running.output[-3000:]
    assert "interrupted by worker shutdown" in task.error, running.output[-5000:]
    assert not Task.objects.filter(status=TaskStatus.IN_PROGRESS).exists()
