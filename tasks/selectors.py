"""Every read of tasks, scoped to the user asking: no endpoint can forget the owner."""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, QuerySet
from django.http import Http404

from tasks.models import Task, TaskStatus

ORDERING_FIELDS = ("created_at", "updated_at", "title", "status", "progress")
# Newest first: what a list shows unless asked otherwise (and what tasks/cache.py caches).
DEFAULT_ORDERING = "-created_at"


def task_list_for(
    *,
    user: AbstractBaseUser,
    status: str | None = None,
    kind: str | None = None,
    ordering: str | None = None,
) -> QuerySet[Task]:
    tasks = Task.objects.filter(owner=user)
    if status:
        tasks = tasks.filter(status=status)
    if kind:
        tasks = tasks.filter(kind=kind)
    if ordering and ordering.lstrip("-") in ORDERING_FIELDS:
        # The id breaks ties so pages never repeat or skip a row.
        tasks = tasks.order_by(ordering, "-id")
    else:
        tasks = tasks.order_by(DEFAULT_ORDERING, "-id")
    return tasks


def task_get_for(*, user: AbstractBaseUser, task_id: UUID | str) -> Task:
    """The user's task, or Http404 — also for someone else's, which must not be confirmed."""
    task = Task.objects.filter(owner=user, pk=task_id).first()
    if task is None:
        raise Http404("No such task.")
    return task


def task_get_anonymous(*, task_id: UUID | str) -> Task | None:
    """A task of the legacy API, found by its id alone (it has no owner)."""
    return Task.objects.filter(pk=task_id, owner__isnull=True).first()


# --- For the runner (not scoped to a user: the worker acts for the owner) ---------------


def task_stop_request(*, task_id: UUID | str) -> str | None:
    """Why a running task is asked to stop ("" if it is not), None if the row is gone."""
    return Task.objects.filter(pk=task_id).values_list("stop_requested", flat=True).first()


# --- For /metrics (taskhub/metrics.py): the whole table, every owner ----------------------


def task_counts_by_status() -> dict[str, int]:
    """How many tasks are in each status right now (every status, 0 included)."""
    counts = dict(Task.objects.order_by().values_list("status").annotate(n=Count("pk")))
    return {status: int(counts.get(status, 0)) for status in TaskStatus.values}


def dispatcher_lag_seconds() -> float:
    """How long the oldest due pending task has been waiting, 0 if none.

    A pending task is due from when it became pending (created or retried: both set
    updated_at) or from its run_at if later. statement_timestamp(), not now(): inside a
    transaction now() is when the transaction began. The WHERE is the two halves of the
    dispatcher's claim, each a partial index (task_pending_now_idx, task_pending_later_idx),
    so this stays cheap however many tasks have finished.
    """
    table = connection.ops.quote_name(Task._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT COALESCE(EXTRACT(EPOCH FROM
                statement_timestamp() - min(GREATEST(updated_at, run_at))), 0)
            FROM {table}
            WHERE status = %s AND (run_at IS NULL OR run_at <= statement_timestamp())
            """,  # noqa: S608 — only the quoted table name is formatted in; values are parameters
            [TaskStatus.PENDING],
        )
        return max(0.0, float(cursor.fetchone()[0]))
