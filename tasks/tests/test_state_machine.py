"""The task state machine (docs/architecture.md): every allowed and every refused transition."""

from __future__ import annotations

import itertools

import pytest

from notifications.models import Event
from tasks import services
from tasks.models import ALLOWED_SOURCES, Task, TaskStatus
from tasks.tests.factories import make_task

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
