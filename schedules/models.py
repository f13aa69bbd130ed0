"""Recurring tasks: a Schedule is a task template plus when to create it (docs/schedules.md)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Schedule(models.Model):
    """Creates a task from its template at each due time of `cron` (in `timezone`) or every
    `every_seconds` (exactly one of the two). `next_run_at` is the next due time, the
    dispatcher's tick fires what is due (schedules.services.schedules_fire_due)."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules"
    )
    cron = models.CharField(
        max_length=100, blank=True, default="", help_text="A 5-field cron expression."
    )
    every_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Or: a fixed interval in seconds."
    )
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA time zone the cron expression is read in."
    )
    enabled = models.BooleanField(default=True)
    # The task template: what tasks.services.task_create receives at each occurrence.
    kind = models.CharField(max_length=64, default="simulate")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    params = models.JSONField(blank=True, default=dict)
    timeout = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds; empty: TASK_DEFAULT_TIMEOUT."
    )
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            # Exactly one of cron and every_seconds.
            models.CheckConstraint(
                condition=(Q(cron="") & Q(every_seconds__isnull=False))
                | (~Q(cron="") & Q(every_seconds__isnull=True)),
                name="schedule_cron_xor_every_seconds",
                violation_error_message="Give exactly one of cron and every_seconds.",
            ),
        ]
        indexes = [
            # The tick's query: enabled schedules by due time; disabled ones stay out of it.
            models.Index(
                fields=["next_run_at"], condition=Q(enabled=True), name="schedule_due_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.cron or f'every {self.every_seconds} s'})"


class ScheduleOccurrence(models.Model):
    """One due time of a schedule and the task it created. Unique per (schedule, due_at): a
    tick retried after a crash, or a second dispatcher, cannot create the same one twice."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="occurrences")
    due_at = models.DateTimeField()
    task = models.ForeignKey(
        "tasks.Task", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Why no task was created (the template no longer valid, e.g. a kind removed).
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-due_at",)
        constraints = [
            models.UniqueConstraint(fields=["schedule", "due_at"], name="occurrence_once"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.due_at.isoformat()}"
