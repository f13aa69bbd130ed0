"""A schedule against the real processes: beat's dispatcher tick fires it, a worker runs
the tasks it creates."""

from __future__ import annotations

from pathlib import Path

import pytest

from devserver import testing
from schedules import services
from schedules.models import ScheduleOccurrence
from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.e2e


def test_an_interval_schedule_creates_tasks_that_complete_under_beat_and_a_worker(
    alice, transactional_db, purge_broker, settings, tmp_path: Path
):
    settings.TASKHUB_SCHEDULE_MIN_INTERVAL_SECONDS = 2  # this process validates the create
    schedule = services.schedule_create(
        owner=alice, every_seconds=2, kind="echo", title="heartbeat", params={"n": 1}
    )
    started = [testing.start_worker()]
    try:
        started.append(testing.start_beat(schedule_dir=tmp_path))

        def two_completed() -> bool:
            return Task.objects.filter(owner=alice, status=TaskStatus.COMPLETED).count() >= 2

        testing.wait_until(two_completed, timeout=60, message="two scheduled tasks completed")
    finally:
        for process in reversed(started):
            process.stop()

    tasks = Task.objects.filter(owner=alice)
    completed = [t for t in tasks if t.status == TaskStatus.COMPLETED]
    assert len(completed) >= 2
    assert all((t.title, t.kind, t.params) == ("heartbeat", "echo", {"n": 1}) for t in completed)
    assert all(t.result == {"n": 1} for t in completed), [t.result for t in completed]
    occurrences = list(ScheduleOccurrence.objects.filter(schedule=schedule))
    # One task per due time, none twice, and every task created by the schedule.
    assert len({o.due_at for o in occurrences}) == len(occurrences) == tasks.count()
    assert {o.task_id for o in occurrences} == {t.pk for t in tasks}
