"""Every read of schedules, scoped to the user asking (another's schedule is a 404)."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from schedules import timing
from schedules.models import Schedule

PREVIEW_COUNT = 5


def schedule_list_for(*, user: AbstractBaseUser) -> QuerySet[Schedule]:
    return Schedule.objects.filter(owner=user).order_by("-created_at", "-id")


def schedule_get_for(*, user: AbstractBaseUser, schedule_id: int) -> Schedule:
    schedule = Schedule.objects.filter(owner=user, pk=schedule_id).first()
    if schedule is None:
        raise Http404("No such schedule.")
    return schedule


def schedule_next_runs(schedule: Schedule, *, count: int = PREVIEW_COUNT) -> list[datetime]:
    """The next `count` run times of a saved schedule, in its time zone; none while it is
    disabled (re-enabling counts from then)."""
    if not schedule.enabled or schedule.next_run_at is None:
        return []
    return timing.next_runs(
        cron=schedule.cron,
        every_seconds=schedule.every_seconds,
        timezone=schedule.timezone,
        after=timezone.now(),
        first=schedule.next_run_at,
        count=count,
    )


def schedule_preview_runs(
    *, cron: str, every_seconds: int | None, timezone_name: str, count: int = PREVIEW_COUNT
) -> list[datetime]:
    """The next `count` run times a schedule with these (validated) values would have if
    saved now: what the API's preview and the admin show before saving."""
    return timing.next_runs(
        cron=cron,
        every_seconds=every_seconds,
        timezone=timezone_name,
        after=timezone.now(),
        count=count,
    )
