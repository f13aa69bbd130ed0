"""What a run costs beyond the processor's own work (tasks/processors/context.py): the claim
is the run's first checkpoint, and a last report of 100 % is recorded by the completion
itself, unless the processor goes on working after it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.models import Event
from tasks import services
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def reports_full_then_returns(ctx):
    ctx.checkpoint()
    ctx.report_progress(100)
    return {"done": True}


def reports_full_then_goes_on(ctx):
    ctx.report_progress(100)
    ctx.sleep(ctx.CHECKPOINT_MIN_INTERVAL * 1.5)  # the work after it, with its checkpoints
    return {"stored": Task.objects.get(pk=ctx.task_id).progress}


def reports_full_then_less(ctx):
    ctx.report_progress(100)
    ctx.report_progress(40)  # a processor may step back (a second phase, say)
    ctx.sleep(ctx.CHECKPOINT_MIN_INTERVAL * 1.5)
    return {"stored": Task.objects.get(pk=ctx.task_id).progress}


@pytest.fixture
def kinds(settings):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        **{
            name: f"tasks.tests.test_processor_context.{name}"
            for name in ("reports_full_then_returns", "reports_full_then_goes_on",
                         "reports_full_then_less")
        },
    }  # fmt: skip


def _run(task: Task) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        services.task_run(task_id=task.pk, worker="test@host")
    return [query["sql"] for query in queries]


def test_a_last_report_of_100_is_recorded_by_the_completion_with_no_write_of_its_own(alice, kinds):
    task = make_task(owner=alice, kind="reports_full_then_returns", status=TaskStatus.QUEUED)

    sql = _run(task)

    task.refresh_from_db()
    assert (task.status, task.progress) == (TaskStatus.COMPLETED, 100)
    completed = Event.objects.get(task_id=task.pk, data__status=TaskStatus.COMPLETED)
    assert completed.data["progress"] == 100
    # Neither a progress-only UPDATE nor a stop-request read right after the claim.
    assert not [q for q in sql if q.startswith('UPDATE "tasks_task" SET "progress"')]
    assert not [q for q in sql if q.startswith('SELECT "tasks_task"."stop_requested"')]


def test_a_report_of_100_is_stored_at_the_next_checkpoint_if_the_processor_goes_on(alice, kinds):
    task = make_task(owner=alice, kind="reports_full_then_goes_on", status=TaskStatus.QUEUED)

    _run(task)

    task.refresh_from_db()
    assert task.result == {"stored": 100}


def test_a_lower_report_after_100_stands(alice, kinds):
    task = make_task(owner=alice, kind="reports_full_then_less", status=TaskStatus.QUEUED)

    _run(task)

    task.refresh_from_db()
    assert task.result == {"stored": 40}


def test_a_cancel_still_stops_the_processor_at_a_checkpoint_after_the_first_interval(
    alice, settings
):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "cancelled_while_running": "tasks.tests.test_processor_context.cancelled_while_running",
    }
    task = make_task(owner=alice, kind="cancelled_while_running", status=TaskStatus.QUEUED)

    _run(task)

    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELLED


def cancelled_while_running(ctx):
    services.task_cancel(task=Task.objects.get(pk=ctx.task_id))  # asks the run to stop
    ctx.sleep(ctx.CHECKPOINT_MIN_INTERVAL * 3)
    return {"ran": "to the end"}
