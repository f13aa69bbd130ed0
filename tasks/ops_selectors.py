"""Reads for the operators' view (taskhub/ops.py, docs/operations.md "The operators' view").

Whole-table reads, every owner: staff only, like /metrics' (tasks/selectors.py). They read
the attempt times the runner records (started_at, finished_at), so the history survives
any restart of the web, the workers or the broker (Flower's does not). One limit: a retry
clears its task's previous started_at/finished_at, so an attempt that was retried since
drops out of these figures.

The window is an hour; neither column has an index, so each read scans the table. The
view caches its answer for a few seconds (taskhub/ops.py), so that is one scan per
refresh, whatever the number of staff viewers.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Count
from django.db.models.functions import Now

from tasks.models import Task, TaskStatus

# The charts' span and step.
WINDOW_MINUTES = 60
SHORT_WINDOW_MINUTES = 15


def _table() -> str:
    return connection.ops.quote_name(Task._meta.db_table)


def task_activity_per_minute(*, minutes: int = WINDOW_MINUTES) -> dict[str, list[Any]]:
    """Per minute of the last `minutes` (oldest first, the current minute last, every
    minute present): attempts started, attempts finished, and the p50/p95 processing
    seconds of the attempts that finished in it (None where none did).

    Minutes are PostgreSQL's (statement_timestamp()), so every web process draws the same
    buckets whatever its clock says.
    """
    table = _table()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXTRACT(EPOCH FROM date_trunc('minute', statement_timestamp()))::bigint"
        )
        now_minute = int(cursor.fetchone()[0])
        since = now_minute - (minutes - 1) * 60
        cursor.execute(
            f"""
            SELECT EXTRACT(EPOCH FROM date_trunc('minute', started_at))::bigint, count(*)
            FROM {table}
            WHERE started_at >= to_timestamp(%s)
            GROUP BY 1
            """,  # noqa: S608 — only the quoted table name is formatted in; values are parameters
            [since],
        )
        started = dict(cursor.fetchall())
        # Ordered-set aggregates take FILTER too: a task cancelled before it started has
        # finished but has no processing time.
        cursor.execute(
            f"""
            SELECT EXTRACT(EPOCH FROM date_trunc('minute', finished_at))::bigint,
                   count(*),
                   percentile_cont(0.5) WITHIN GROUP (
                       ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
                       FILTER (WHERE started_at IS NOT NULL),
                   percentile_cont(0.95) WITHIN GROUP (
                       ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
                       FILTER (WHERE started_at IS NOT NULL)
            FROM {table}
            WHERE finished_at >= to_timestamp(%s)
            GROUP BY 1
            """,  # noqa: S608 — only the quoted table name is formatted in; values are parameters
            [since],
        )
        finished = {row[0]: row[1:] for row in cursor.fetchall()}
    times = [since + 60 * i for i in range(minutes)]
    return {
        "t": times,
        "started": [int(started.get(t, 0)) for t in times],
        "finished": [int(finished[t][0]) if t in finished else 0 for t in times],
        "p50": [_seconds(finished[t][1]) if t in finished else None for t in times],
        "p95": [_seconds(finished[t][2]) if t in finished else None for t in times],
    }


def _seconds(value: Any) -> float | None:
    return None if value is None else round(max(0.0, float(value)), 3)


def task_rates_per_minute(activity: dict[str, list[Any]]) -> dict[str, float]:
    """Attempts started and finished per minute over the last 15 minutes and the last
    hour, from task_activity_per_minute's buckets (the current minute, still filling,
    counts as a whole one: the figure errs low, never high)."""
    rates = {}
    for label, span in (("15m", SHORT_WINDOW_MINUTES), ("1h", WINDOW_MINUTES)):
        for series in ("started", "finished"):
            counts = activity[series][-span:]
            rates[f"{series}_{label}"] = round(sum(counts) / span, 2)
    return rates


def task_processing_percentiles_by_kind(*, minutes: int = WINDOW_MINUTES) -> list[dict[str, Any]]:
    """p50/p95 processing seconds (finished_at - started_at) by kind of the attempts that
    finished in the last `minutes`, with how many there were; every outcome counts (a
    failed run took its time too)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT kind, count(*),
                   percentile_cont(0.5) WITHIN GROUP (
                       ORDER BY EXTRACT(EPOCH FROM finished_at - started_at)),
                   percentile_cont(0.95) WITHIN GROUP (
                       ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))
            FROM {_table()}
            WHERE finished_at >= statement_timestamp() - make_interval(mins => %s)
              AND started_at IS NOT NULL
            GROUP BY kind
            ORDER BY kind
            """,  # noqa: S608 — only the quoted table name is formatted in; values are parameters
            [minutes],
        )
        return [
            {"kind": kind, "count": int(count), "p50": _seconds(p50), "p95": _seconds(p95)}
            for kind, count, p50, p95 in cursor.fetchall()
        ]


def task_summaries(*, task_ids: Iterable[UUID | str]) -> dict[str, dict[str, Any]]:
    """Title, owner, status and kind of the given tasks, by id (for the workers' active
    lists); ids that are not TaskHub tasks are left out."""
    ids = []
    for task_id in task_ids:
        try:
            ids.append(UUID(str(task_id)))
        except ValueError:
            continue
    rows = Task.objects.filter(pk__in=ids).values(
        "id", "title", "owner__username", "status", "kind", "progress"
    )
    return {
        str(row["id"]): {
            "title": row["title"],
            "owner": row["owner__username"] or "",
            "status": row["status"],
            "kind": row["kind"],
            "progress": row["progress"],
        }
        for row in rows
    }


def task_get_for_staff(*, task_id: UUID | str) -> Task | None:
    """Any owner's task by id, None if unknown: no owner scoping, so only for staff acting
    from the operators' view (taskhub/ops.py), never for a user's request."""
    return Task.objects.filter(pk=task_id).first()


def tasks_recently_unsuccessful(*, limit: int = 10) -> list[dict[str, Any]]:
    """The last `limit` tasks that ended failed or cancelled, newest first: what an
    operator may want to retry."""
    rows = (
        Task.objects.filter(status__in=[TaskStatus.FAILED, TaskStatus.CANCELLED])
        .order_by("-finished_at", "-updated_at")
        .values("id", "title", "owner__username", "status", "kind", "error", "finished_at")[:limit]
    )
    return [
        {
            "task_id": str(row["id"]),
            "title": row["title"],
            "owner": row["owner__username"] or "",
            "status": row["status"],
            "kind": row["kind"],
            "error": row["error"][:200],
            "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        }
        for row in rows
    ]


def task_outcomes_by_worker(*, minutes: int = WINDOW_MINUTES) -> dict[str, dict[str, int]]:
    """How the attempts each worker ran ended in the last `minutes`, by its node name
    (Task.worker): {"worker1@host": {"completed": 17, "failed": 2, "cancelled": 0}}. From
    PostgreSQL, so a worker's restart (which resets Celery's own counts) loses none."""
    rows = (
        Task.objects.filter(
            finished_at__gte=Now() - timedelta(minutes=minutes),
            status__in=[TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED],
        )
        .exclude(worker="")
        .order_by()
        .values_list("worker", "status")
        .annotate(n=Count("pk"))
    )
    outcomes: dict[str, dict[str, int]] = {}
    for worker, status, count in rows:
        counts = outcomes.setdefault(
            worker, {TaskStatus.COMPLETED: 0, TaskStatus.FAILED: 0, TaskStatus.CANCELLED: 0}
        )
        counts[status] = int(count)
    return {worker: {str(k): v for k, v in counts.items()} for worker, counts in outcomes.items()}
