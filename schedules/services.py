"""Every write to a Schedule, and the firing of due ones (called from the dispatcher's tick
as a tick hook of tasks/extensions.py, registered in SchedulesConfig.ready())."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from schedules import timing
from schedules.models import Schedule, ScheduleOccurrence
from taskhub import outages
from tasks import services as task_services

logger = logging.getLogger("schedules")

TIMING_FIELDS = ("cron", "every_seconds", "timezone")
TEMPLATE_FIELDS = ("kind", "title", "description", "params", "timeout")
EDITABLE_FIELDS = (*TIMING_FIELDS, "enabled", *TEMPLATE_FIELDS)
DEFAULTS: dict[str, Any] = {
    "cron": "",
    "every_seconds": None,
    "timezone": "UTC",
    "enabled": True,
    "kind": "simulate",
    "description": "",
    "params": {},
    "timeout": None,
}
MAX_EVERY_SECONDS = 366 * 24 * 3600


def schedule_validate(**values: Any) -> dict[str, Any]:
    """The values a schedule may be saved with (cron normalized), or ValidationError
    {field: [message]} naming every bad one. The template's fields get task_create's own
    words (tasks.services.task_validate_run)."""
    errors: dict[str, list[str]] = {}
    cron = (values.get("cron") or "").strip()
    every = values.get("every_seconds")
    if bool(cron) == (every is not None):
        message = "Give exactly one of cron and every_seconds."
        errors["cron"] = errors["every_seconds"] = [message]
    elif cron:
        try:
            cron = timing.normalize_cron(cron)
        except ValueError as exc:
            errors["cron"] = [str(exc)]
    else:
        minimum = settings.TASKHUB_SCHEDULE_MIN_INTERVAL_SECONDS
        if not isinstance(every, int) or not minimum <= every <= MAX_EVERY_SECONDS:
            errors["every_seconds"] = [
                f"Must be a whole number of seconds between {minimum} and {MAX_EVERY_SECONDS}."
            ]
    try:
        timing.time_zone(values.get("timezone") or "")
    except ValueError as exc:
        errors["timezone"] = [str(exc)]
    title = values.get("title") or ""
    if not title.strip():
        errors["title"] = ["This field may not be blank."]
    elif len(title) > 200:
        errors["title"] = ["Ensure this field has no more than 200 characters."]
    timeout = values.get("timeout")
    try:
        task_services.task_validate_run(
            kind=values.get("kind") or "",
            params=values.get("params"),
            timeout=settings.TASKHUB_TASK_DEFAULT_TIMEOUT if timeout is None else timeout,
        )
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, messages)
    if errors:
        raise ValidationError(errors)
    return {**values, "cron": cron, "every_seconds": None if cron else every}


def _first_run_after(schedule: Schedule, now: datetime) -> datetime:
    if schedule.cron:
        return timing.cron_next_after(schedule.cron, timing.time_zone(schedule.timezone), now)
    # Whole seconds: the times an API client and the admin see stay readable.
    return now.replace(microsecond=0) + timedelta(seconds=schedule.every_seconds)


def schedule_create(*, owner: AbstractBaseUser, **values: Any) -> Schedule:
    values = schedule_validate(**{**DEFAULTS, **values})
    with transaction.atomic():
        # The owner's row is the lock that makes the cap hold under concurrent creates.
        type(owner).objects.select_for_update().filter(pk=owner.pk).first()
        cap = settings.TASKHUB_SCHEDULE_MAX_PER_USER
        if Schedule.objects.filter(owner=owner).count() >= cap:
            raise ValidationError(f"You have {cap} schedules already, the most allowed.")
        schedule = Schedule(owner=owner, **{f: values[f] for f in EDITABLE_FIELDS})
        schedule.next_run_at = _first_run_after(schedule, timezone.now())
        schedule.save()
    logger.info("schedule %s created by user %s: %s", schedule.pk, owner.pk, schedule)
    return schedule


def schedule_update(*, schedule: Schedule, **changes: Any) -> Schedule:
    """Change any editable field. A change of when (cron, interval, time zone) or a
    re-enable counts from now: the next run is the first due time after this change."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    with transaction.atomic():
        locked = Schedule.objects.select_for_update().get(pk=schedule.pk)
        merged = {f: getattr(locked, f) for f in EDITABLE_FIELDS} | changes
        values = schedule_validate(**merged)
        retime = any(values[f] != getattr(locked, f) for f in TIMING_FIELDS) or (
            values["enabled"] and not locked.enabled
        )
        for field in EDITABLE_FIELDS:
            setattr(locked, field, values[field])
        if retime or locked.next_run_at is None:
            locked.next_run_at = _first_run_after(locked, timezone.now())
        locked.save()
    return locked


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete the schedule and its occurrence records; the tasks it created stay."""
    Schedule.objects.filter(pk=schedule.pk).delete()
    logger.info("schedule %s deleted", schedule.pk)


def _fire_one(schedule: Schedule, now: datetime) -> ScheduleOccurrence | None:
    """Create the task of the latest due time <= now (earlier missed ones collapse into it),
    record the occurrence, advance next_run_at. Call while holding the schedule's lock."""
    zone = timing.time_zone(schedule.timezone)
    if schedule.cron:
        due_at = max(
            timing.cron_latest_at_or_before(schedule.cron, zone, now), schedule.next_run_at
        )
        next_run_at = timing.cron_next_after(schedule.cron, zone, now)
    else:
        due_at = timing.interval_latest_at_or_before(
            schedule.next_run_at, schedule.every_seconds, now
        )
        next_run_at = timing.interval_next_after(schedule.next_run_at, schedule.every_seconds, now)
    missed = due_at != schedule.next_run_at
    schedule.next_run_at = next_run_at
    schedule.last_run_at = due_at
    schedule.save(update_fields=["next_run_at", "last_run_at", "updated_at"])
    try:
        with transaction.atomic():
            occurrence = ScheduleOccurrence.objects.create(schedule=schedule, due_at=due_at)
    except IntegrityError:
        # Already fired (a clock set back, an edit moving next_run_at back onto a due
        # time already done): the unique (schedule, due_at) keeps it to one task.
        logger.warning("schedule %s: occurrence %s exists, not fired again", schedule.pk, due_at)
        return None
    try:
        # A savepoint of its own: whatever fails here is undone for this schedule only,
        # never for the other users' schedules firing in the same transaction.
        with transaction.atomic():
            occurrence.task = task_services.task_create(
                owner=schedule.owner,
                title=schedule.title,
                description=schedule.description,
                kind=schedule.kind,
                params=schedule.params,
                timeout=schedule.timeout,
            )
    except ValidationError as exc:
        # The template was valid when saved; a kind removed from TASK_PROCESSORS since (or
        # a lowered limit) makes it fail now. Recorded, and the schedule keeps its rhythm.
        occurrence.error = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        logger.warning("schedule %s: no task created: %s", schedule.pk, occurrence.error)
    except (OperationalError, InterfaceError):
        raise  # the database is gone: the whole tick fails, and the next one fires it all
    except Exception as exc:
        # A defect (a value the database refuses, say): this occurrence records it with a
        # traceback in the log, the schedule keeps its rhythm.
        occurrence.error = f"internal error: {outages.describe(exc)}"
        logger.exception("schedule %s: no task created (internal error)", schedule.pk)
    occurrence.save(update_fields=["task", "error"])
    logger.info(
        "schedule %s fired for %s%s: task %s",
        schedule.pk,
        due_at.isoformat(),
        " (earlier missed runs collapsed into this one)" if missed else "",
        occurrence.task_id,
    )
    return occurrence


def schedules_fire_due(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Fire every enabled schedule whose next_run_at has come: one task each, however many
    due times were missed (docs/schedules.md). Returns how many occurrences were recorded.

    SKIP LOCKED lets two dispatchers run at once: each takes different schedules, and a
    schedule it takes has its next_run_at advanced in the same transaction, so the other
    finds it not due any more once it commits. The unique (schedule, due_at) is the
    backstop for anything else."""
    now = now or timezone.now()
    limit = limit or settings.TASKHUB_DISPATCH_BATCH_SIZE
    fired = 0
    with transaction.atomic():
        due = list(
            Schedule.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("owner")
            # A deactivated user's schedules wait (and fire once if reactivated).
            .filter(enabled=True, next_run_at__lte=now, owner__is_active=True)
            .order_by("next_run_at")[:limit]
        )
        # task_create locks the owner's event counter: a fixed order keeps two dispatchers
        # with overlapping owners from deadlocking (as tasks.services.dispatch_pending_tasks).
        due.sort(key=lambda s: (s.owner_id, s.next_run_at, s.pk))
        for schedule in due:
            if _fire_one(schedule, now) is not None:
                fired += 1
    return fired
