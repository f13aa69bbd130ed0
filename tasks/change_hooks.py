"""What follows a committed change to a task, besides its event: tasks.services calls these.

After commit, never before: a cache version bumped before the commit would let a reader
refill the cache with the old row under the new version (tasks/cache.py explains the
race), and a metric counted before the commit would count changes that were rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from django.db import transaction

from taskhub import metrics
from tasks import cache
from tasks.models import Task


def task_changed(task: Task, *, previous_status: str | None) -> None:
    """A create or a status change was written: in the current transaction, or already
    committed when there is none (a create is one statement)."""
    tasks_changed([task], previous_status=previous_status)


def tasks_changed(tasks: Sequence[Task], *, previous_status: str | None) -> None:
    """task_changed for tasks that changed together (a dispatcher run): one callback, one
    Redis call for all their cache versions."""
    # Copied now: the instances may change again before the callback runs.
    changes = [
        (
            task.pk,
            task.owner_id,
            task.kind,
            task.status if task.is_terminal else None,
            task.started_at,
            task.finished_at,
        )
        for task in tasks
    ]

    def after_commit() -> None:
        cache.tasks_versions_bump([(task_id, owner_id) for task_id, owner_id, *_ in changes])
        for _, _, kind, outcome, started_at, finished_at in changes:
            metrics.task_change_observed(
                kind=kind,
                created=previous_status is None,
                outcome=outcome,
                started_at=started_at,
                finished_at=finished_at,
            )

    transaction.on_commit(after_commit, robust=True)


def task_progressed(*, task_id: UUID | str, owner_id: int | None) -> None:
    """A running task's progress was written: cached reads show progress, so they die too."""
    transaction.on_commit(
        lambda: cache.task_versions_bump(task_id=task_id, owner_id=owner_id), robust=True
    )


def task_details_changed(*, task_id: UUID | str, owner_id: int | None) -> None:
    """An operator edited a task's details (tasks.services.task_update_details)."""
    transaction.on_commit(
        lambda: cache.task_versions_bump(task_id=task_id, owner_id=owner_id), robust=True
    )


def task_deleted(*, task_id: UUID | str, owner_id: int | None) -> None:
    """An operator deleted a task (tasks.services.task_delete): its cached detail and the
    owner's cached list pages must not show it any more."""
    transaction.on_commit(
        lambda: cache.task_versions_bump(task_id=task_id, owner_id=owner_id), robust=True
    )
