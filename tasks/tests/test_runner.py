"""How a run ends (tasks.services.task_run): whatever the processor does, the task leaves
in_progress at once with a status and an error that say why, and the worker goes on."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devserver import testing
from devserver.testing import wait_until
from notifications.models import Event
from tasks import services
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

MISBEHAVING = {
    "loses_its_database": "tasks.tests.processors.loses_its_database",
    "returns": "tasks.tests.processors.returns",
    "raises": "tasks.tests.processors.raises",
    "never_returns": "tasks.tests.processors.never_returns",
}
ENV = "returns=tasks.tests.processors.returns,raises=tasks.tests.processors.raises"


@pytest.fixture(autouse=True)
def misbehaving_kinds(settings):
    settings.TASKHUB_TASK_PROCESSORS = {**settings.TASKHUB_TASK_PROCESSORS, **MISBEHAVING}


def run(alice, kind: str, **params) -> Task:
    task = make_task(owner=alice, title=kind, kind=kind, params=params, status=TaskStatus.QUEUED)
    services.task_run(task_id=task.pk, worker="test@host")
    task.refresh_from_db()
    return task


def statuses_seen(task: Task) -> list[str]:
    return [e.data["status"] for e in Event.objects.filter(task_id=task.pk).order_by("seq")]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("datetime", "result is not JSON: Object of type datetime is not JSON serializable"),
        ("set", "result is not JSON: Object of type set is not JSON serializable"),
        ("model", "result is not JSON: Object of type Task is not JSON serializable"),
        ("nan", "result is not JSON: Out of range float values are not JSON compliant"),
    ],
)
def test_a_result_that_is_not_json_fails_the_task_at_once_saying_so(alice, what, error):
    task = run(alice, "returns", what=what)

    assert task.status == TaskStatus.FAILED
    assert error in task.error
    assert task.result is None
    assert statuses_seen(task)[-1] == "failed"


@pytest.mark.django_db
def test_a_result_over_the_limit_fails_the_task_naming_both_sizes(alice, settings):
    settings.TASKHUB_TASK_MAX_RESULT_BYTES = 1024 * 1024

    task = run(alice, "returns", what="megabytes", bytes=10 * 1024 * 1024)

    assert task.status == TaskStatus.FAILED
    assert task.error == "result is 10485772 bytes of JSON; at most 1048576 are kept"


@pytest.mark.django_db
def test_a_result_within_the_limit_is_kept(alice, settings):
    settings.TASKHUB_TASK_MAX_RESULT_BYTES = 1024 * 1024

    task = run(alice, "returns", what="megabytes", bytes=1000)

    assert task.status == TaskStatus.COMPLETED
    assert task.result == {"blob": "x" * 1000}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("system_exit", "SystemExit: 3"),
        ("unusual", "Unusual: out of the ordinary"),
        ("plain", "RuntimeError: plain failure"),
    ],
)
def test_anything_a_processor_raises_fails_its_task(alice, what, error):
    task = run(alice, "raises", what=what)

    assert task.status == TaskStatus.FAILED
    assert task.error == error


@pytest.mark.django_db
def test_a_keyboard_interrupt_stops_the_worker_but_not_before_the_task_is_ended(alice):
    task = make_task(owner=alice, title="ctrl-c", kind="raises", status=TaskStatus.QUEUED,
                     params={"what": "keyboard_interrupt"})  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        services.task_run(task_id=task.pk, worker="test@host")

    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert task.error == services.INTERRUPTED_BY_SHUTDOWN


@pytest.mark.django_db
def test_a_duplicate_run_message_does_nothing(alice):
    task = make_task(owner=alice, title="done", kind="echo", status=TaskStatus.COMPLETED)

    with CaptureQueriesContext(connection) as queries:
        assert services.task_run(task_id=task.pk, worker="test@host") is None
    # The claim is the guard, and its one statement (which finds nothing to move) is all a
    # duplicate costs: the lookup for a claim that committed but lost its answer runs only
    # after a retried claim.
    statements = [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].split(" ", 1)[0] not in ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")
    ]
    assert len(statements) == 1, statements
    assert "tasks_task" in statements[0]
    task.refresh_from_db()
    assert task.status == TaskStatus.COMPLETED


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_ends_bad_results_at_once_and_keeps_serving(alice, purge_broker):
    worker = testing.start_worker(extra_env={"TASK_PROCESSORS": ENV})
    try:
        bad = services.task_create(owner=alice, title="bad", kind="returns", params={"what": "set"})
        exits = services.task_create(
            owner=alice, title="exits", kind="raises", params={"what": "system_exit"}
        )
        good = services.task_create(owner=alice, title="good", kind="echo", params={"n": 1})

        for task in (bad, exits, good):
            wait_until(lambda t=task: _finished(t), timeout=30, message=f"{task.title} ended")
    finally:
        worker.stop()

    assert (bad.status, exits.status, good.status) == ("failed", "failed", "completed")
    assert bad.error.startswith("result is not JSON")
    assert exits.error == "SystemExit: 3"
    assert good.result == {"n": 1}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_processor_that_never_returns_is_ended_by_its_time_limit(alice, purge_broker):
    worker = testing.start_worker(
        extra_env={"TASK_PROCESSORS": "never_returns=tasks.tests.processors.never_returns"}
    )
    try:
        task = services.task_create(owner=alice, title="spins", kind="never_returns", timeout=1)
        wait_until(lambda: _finished(task), timeout=30, message="the time limit")
    finally:
        worker.stop()

    assert task.status == TaskStatus.FAILED
    assert task.error == "timed out after 1 s"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_processor_whose_database_session_dies_fails_at_once_not_by_the_reaper(
    alice, purge_broker
):
    kind = "loses_its_database=tasks.tests.processors.loses_its_database"
    worker = testing.start_worker(extra_env={"TASK_PROCESSORS": kind})
    try:
        task = services.task_create(owner=alice, title="db lost", kind="loses_its_database")
        wait_until(lambda: _finished(task), timeout=30, message="the task to end")
        after = services.task_create(owner=alice, title="next", kind="echo", params={"n": 2})
        wait_until(lambda: _finished(after), timeout=30, message="the next task")
    finally:
        worker.stop()

    assert task.status == TaskStatus.FAILED
    assert task.error.startswith("OperationalError")
    assert after.status == TaskStatus.COMPLETED


def _finished(task: Task) -> bool:
    task.refresh_from_db()
    return task.is_terminal
