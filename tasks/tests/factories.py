"""Small factories: rows in a given state without going through the worker."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from tasks.models import Task, TaskStatus


def make_task(*, owner=None, status: str = TaskStatus.PENDING, **fields: Any) -> Task:
    fields.setdefault("title", "a task")
    fields.setdefault("timeout", settings.TASKHUB_TASK_DEFAULT_TIMEOUT)
    return Task.objects.create(owner=owner, status=status, **fields)
