"""The task state machine (docs/architecture.md): every allowed and every refused transition."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications import protocol
from notifications.models import Event
from tasks import services
from tasks.models import ALLOWED_SOURCES, Task, TaskStatus
from tasks.tests.factories import make_task
from tasks.tests.row_lock import RowLock

pytestmark = pytest.mark.django_db

ALLOWED = {
    (TaskStatus.PENDING, TaskStatus.QUEUED),
    (TaskStatus.QUEUED, TaskStatus.IN_PROGRESS),
    (TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED),
    (TaskStatus.IN_PROGRESS, TaskStatus.FAILED),
    (TaskStatus.PENDING, TaskStatus.CANCELLED),
    (TaskStatus.QUEUED, TaskStatus.CANCELLED),
    (TaskStatus.IN_PROGRESS, TaskStatus.CANCELLED),
    (TaskStatus.FAILED, TaskStatus.PENDING),
    (TaskStatus.CANCELLED, TaskStatus.PENDING),
    # An automatic retry (services.task_fail with attempts left).
    (TaskStatus.IN_PROGRESS, TaskStatus.PENDING),
}
ALL_PAIRS = list(itertools.product(TaskStatus.values, repeat=2))


def test_the_transition_map_is_exactly_the_design():
    declared = {
        (source, target) for target, sources in ALLOWED_SOURCES.items() for source in sources
    }
    assert declared == ALLOWED


@pytest.mark.parametrize(("source", "target"), sorted(ALLOWED))
def test_allowed_transition_moves_the_task_and_writes_one_event(alice, source, target):
    task = make_task(owner=alice, status=source)

    moved = services.task_transition(task_id=task.pk, to=target)

    assert moved is not None
    task.refresh_from_db()
    assert task.status == target
    events = list(Event.objects.filter(task_id=task.pk))
    assert len(events) == 1
    assert events[0].data["previous_status"] == source
    assert events[0].data["status"] == target


@pytest.mark.parametrize(
    ("source", "target"), sorted(pair for pair in ALL_PAIRS if pair not in ALLOWED)
)
def test_refused_transition_is_a_no_op(alice, source, target):
    task = make_task(owner=alice, status=source)

    assert services.task_transition(task_id=task.pk, to=target) is None

    task.refresh_from_db()
    assert task.status == source
    assert not Event.objects.filter(task_id=task.pk).exists()


def test_a_status_outside_the_machine_is_refused_by_the_database(alice):
    from django.db import IntegrityError, transaction

    task = make_task(owner=alice)
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(status="done")


# --- Races: a transition that waits for another session's lock on the row ----------------
# The check and the write are one locked step (services._move_in_one_statement): what a
# concurrent writer commits while this transition waits is what it checks.


@pytest.mark.django_db(transaction=True)  # the lock holder's own connection
def test_a_transition_that_waited_for_the_row_sees_the_status_the_other_session_left(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)

    with RowLock(task.pk) as lock:
        lock.when_waited_for(
            lock.write("UPDATE tasks_task SET status = 'cancelled' WHERE id = %s", [str(task.pk)])
        )
        completed = services.task_complete(task_id=task.pk, result={"late": True})

    assert completed is None
    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.CANCELLED, None)
    assert not Event.objects.filter(task_id=task.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_transition_that_waited_for_the_row_reports_the_status_it_moved_from(alice):
    task = make_task(owner=alice, status=TaskStatus.QUEUED)

    with RowLock(task.pk) as lock:
        lock.when_waited_for(
            lock.write("UPDATE tasks_task SET status = 'in_progress' WHERE id = %s", [str(task.pk)])
        )
        # queued or in_progress may be cancelled: it goes through, from what it found.
        cancelled = services.task_transition(task_id=task.pk, to=TaskStatus.CANCELLED, error="stop")

    assert cancelled is not None and cancelled.previous_status == TaskStatus.IN_PROGRESS
    event = Event.objects.get(task_id=task.pk)
    assert (event.data["previous_status"], event.data["status"]) == ("in_progress", "cancelled")
    assert event.data["error"] == "stop"


@pytest.mark.django_db(transaction=True)
def test_a_run_outcome_that_waited_while_a_retry_began_is_not_recorded_on_the_retry(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)

    with RowLock(task.pk) as lock:
        lock.when_waited_for(
            lock.write("UPDATE tasks_task SET attempts = 2 WHERE id = %s", [str(task.pk)])
        )
        assert services.task_complete(task_id=task.pk, result={}, attempt=1) is None

    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.IN_PROGRESS, 2)


@pytest.mark.django_db(transaction=True)
def test_a_transition_that_waited_for_the_row_is_never_stamped_before_the_write_it_waited_for(
    alice,
):
    # A page keeps the newest state it has seen (by updated_at): a cancel request written
    # while the run's outcome waited for the row, here by a web process whose clock is a
    # little ahead, must look older than the outcome.
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)
    cancel_requested_at = timezone.now() + timedelta(seconds=2)

    with RowLock(task.pk) as lock:
        lock.when_waited_for(
            lock.write(
                "UPDATE tasks_task SET stop_requested = 'cancel', updated_at = %s WHERE id = %s",
                [cancel_requested_at, str(task.pk)],
            )
        )
        completed = services.task_complete(task_id=task.pk, result={})

    assert completed is not None and completed.updated_at > cancel_requested_at
    task.refresh_from_db()
    assert task.updated_at == completed.updated_at
    event = Event.objects.get(task_id=task.pk)
    assert event.data["updated_at"] == protocol.format_ts(completed.updated_at)
