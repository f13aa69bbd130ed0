"""Schedules in a given state (through the service, then moved in time by the test)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schedules import services
from schedules.models import Schedule


def make_schedule(*, owner, due_at: datetime | None = None, **values: Any) -> Schedule:
    values.setdefault("title", "nightly report")
    values.setdefault("kind", "echo")
    if "cron" not in values:
        values.setdefault("every_seconds", 60)
    schedule = services.schedule_create(owner=owner, **values)
    if due_at is not None:
        Schedule.objects.filter(pk=schedule.pk).update(next_run_at=due_at)
        schedule.refresh_from_db()
    return schedule
