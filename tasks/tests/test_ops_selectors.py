"""The operators' view's reads over task history (tasks/ops_selectors.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import ops_selectors
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db


def finished_task(owner, *, kind: str, seconds: float, ago: timedelta, status=TaskStatus.COMPLETED):
    # Rows as the runner leaves them; written directly, as a fixture, to set the times.
    finished_at = timezone.now() - ago
    return Task.objects.create(
        owner=owner,
        title=f"{kind} {seconds}",
        kind=kind,
        status=status,
        timeout=60,
        started_at=finished_at - timedelta(seconds=seconds),
        finished_at=finished_at,
    )


def test_processing_percentiles_by_kind_cover_the_last_hour_only(alice):
    for seconds in (1, 2, 3, 4, 10):
        finished_task(alice, kind="simulate", seconds=seconds, ago=timedelta(minutes=5))
    finished_task(alice, kind="echo", seconds=0.5, ago=timedelta(minutes=1), status="failed")
    finished_task(alice, kind="simulate", seconds=999, ago=timedelta(hours=2))

    by_kind = ops_selectors.task_processing_percentiles_by_kind()

    assert by_kind == [
        {"kind": "echo", "count": 1, "p50": 0.5, "p95": 0.5},
        {"kind": "simulate", "count": 5, "p50": 3.0, "p95": 8.8},
    ]


def test_activity_has_every_minute_of_the_hour_and_counts_starts_and_ends_where_they_fell(
    alice,
):
    finished_task(alice, kind="echo", seconds=2, ago=timedelta(seconds=0))
    finished_task(alice, kind="echo", seconds=4, ago=timedelta(seconds=0))
    # Cancelled before it started: finished, with no processing time.
    Task.objects.create(
        owner=alice, title="never ran", status="cancelled", timeout=60, finished_at=timezone.now()
    )

    activity = ops_selectors.task_activity_per_minute()

    assert len(activity["t"]) == 60
    assert all(b - a == 60 for a, b in zip(activity["t"], activity["t"][1:], strict=False))
    assert sum(activity["finished"]) == 3
    assert sum(activity["started"]) == 2
    assert [p for p in activity["p50"] if p is not None] != []
    assert max(p for p in activity["p95"] if p is not None) <= 4.0
    rates = ops_selectors.task_rates_per_minute(activity)
    assert rates["finished_1h"] == round(3 / 60, 2)
    assert rates["finished_15m"] == round(3 / 15, 2)


def test_task_summaries_name_title_and_owner_and_skip_what_is_not_a_task(alice):
    task = finished_task(alice, kind="echo", seconds=1, ago=timedelta(0))

    summaries = ops_selectors.task_summaries(task_ids=[str(task.pk), "not-a-uuid", None])

    assert summaries == {
        str(task.pk): {
            "title": task.title,
            "owner": "alice",
            "status": "completed",
            "kind": "echo",
            "progress": 0,
        }
    }


def test_outcomes_by_worker_count_the_last_hour_by_node_name(alice):
    for status in ("completed", "completed", "failed"):
        task = finished_task(alice, kind="echo", seconds=1, ago=timedelta(minutes=2), status=status)
        Task.objects.filter(pk=task.pk).update(worker="w1@host")
    old = finished_task(alice, kind="echo", seconds=1, ago=timedelta(hours=2))
    Task.objects.filter(pk=old.pk).update(worker="w1@host")
    finished_task(alice, kind="echo", seconds=1, ago=timedelta(minutes=1), status="cancelled")

    assert ops_selectors.task_outcomes_by_worker() == {
        "w1@host": {"completed": 2, "failed": 1, "cancelled": 0}
    }
