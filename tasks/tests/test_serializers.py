"""A task's API representation, written out in TaskOutputSerializer, is exactly what DRF's
generic ModelSerializer makes of the same fields: same keys, order, values and bytes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer

from tasks.api.serializers import TASK_FIELDS, TaskOutputSerializer
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


class GenericTaskSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = TASK_FIELDS


def tasks_in_every_state(owner) -> list[Task]:
    now = timezone.now()
    made = [
        make_task(owner=owner, title="pending <b>", params={"n": 3, "nested": [1, "two"]}),
        make_task(owner=owner, status=TaskStatus.QUEUED, queued_at=now, run_at=now),
        make_task(owner=owner, status=TaskStatus.IN_PROGRESS, progress=42, started_at=now),
        make_task(
            owner=owner,
            status=TaskStatus.COMPLETED,
            description="done\nwith «unicode»",
            progress=100,
            result={"words": 2, "ok": True, "none": None},
            finished_at=now + timedelta(microseconds=1),
        ),
        make_task(owner=owner, status=TaskStatus.COMPLETED, result="plain text", attempts=3),
        make_task(owner=owner, status=TaskStatus.FAILED, error="boom", finished_at=now),
        make_task(owner=None, status=TaskStatus.CANCELLED, error="cancelled on request"),
    ]
    # As the endpoints meet them: fresh from a create and read back from the database.
    return made + [Task.objects.get(pk=task.pk) for task in made]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Moscow"])
def test_every_state_renders_exactly_as_the_generic_serializer_would(alice, zone):
    with timezone.override(zone):
        for task in tasks_in_every_state(alice):
            fast = TaskOutputSerializer(task).data
            generic = GenericTaskSerializer(task).data

            assert list(fast) == list(generic) == list(TASK_FIELDS)
            assert JSONRenderer().render(fast) == JSONRenderer().render(generic), task.status


def test_a_list_renders_as_the_generic_serializer_would(alice):
    tasks = tasks_in_every_state(alice)

    fast = TaskOutputSerializer(tasks, many=True).data
    generic = GenericTaskSerializer(tasks, many=True).data

    assert JSONRenderer().render(fast) == JSONRenderer().render(generic)
