from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from notifications import protocol


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    QUEUED = "queued", "Queued"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# The whole state machine: target status -> the statuses it may be reached from.
# Only tasks.services writes `status`, always checking this map under the row's lock, so a
# lost race is a no-op rather than a corrupt state.
ALLOWED_SOURCES: dict[str, frozenset[str]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.PENDING}),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.QUEUED}),
    TaskStatus.COMPLETED: frozenset({TaskStatus.IN_PROGRESS}),
    TaskStatus.FAILED: frozenset({TaskStatus.IN_PROGRESS}),
    TaskStatus.CANCELLED: frozenset(
        {TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.IN_PROGRESS}
    ),
    # Retry: a manual one from failed/cancelled (services.task_retry), an automatic one
    # straight from in_progress when a failed attempt has attempts left (services.task_fail
    # decides, under the row's lock; docs/tasks.md "Retries"). Never a running task by hand:
    # task_retry narrows its sources to failed/cancelled.
    TaskStatus.PENDING: frozenset(
        {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.IN_PROGRESS}
    ),
}

# The statuses a task only leaves by a retry. The wire protocol names them (clients, the
# consumer and the page all read notifications.protocol.TASK_TERMINAL_STATUSES); building
# the set here from it fails at import if the two ever name different statuses.
TERMINAL_STATUSES = frozenset(TaskStatus(status) for status in protocol.TASK_TERMINAL_STATUSES)


class StopRequest(models.TextChoices):
    """Why a running processor is asked to stop at its next checkpoint."""

    NONE = "", "None"
    CANCEL = "cancel", "Cancel requested"
    SHUTDOWN = "shutdown", "Worker shutting down"


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Null for tasks made through the anonymous legacy API: found by id only.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="tasks",
        null=True,
        blank=True,
    )
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    kind = models.CharField(max_length=64, default="simulate")
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    timeout = models.PositiveIntegerField(help_text="Seconds the processor may run.")
    attempts = models.PositiveIntegerField(default=1)
    # Retry policy (docs/tasks.md "Retries"): a failed attempt with attempts left goes back to
    # pending with run_at pushed out by retry_backoff * 2**(attempt-1) seconds, jittered and
    # capped. Resolved at create from the request or the kind's defaults, so stored whole.
    # db_default as well: rows inserted by SQL (bench/, the search plan test) and by the
    # previous release's code during a rolling deploy get the same values.
    max_attempts = models.PositiveSmallIntegerField(
        default=1, db_default=1, help_text="Runs before a failure is final; 1: no automatic retry."
    )
    retry_backoff = models.PositiveIntegerField(
        default=10,
        db_default=10,
        help_text="Seconds before the first automatic retry; doubled each time.",
    )
    # Where a signed POST goes when the task reaches a terminal status (webhooks app).
    callback_url = models.URLField(max_length=2000, blank=True, default="", db_default="")
    run_at = models.DateTimeField(null=True, blank=True, help_text="Not before this time.")
    stop_requested = models.CharField(
        max_length=16, choices=StopRequest.choices, blank=True, default=StopRequest.NONE
    )
    # The Celery worker node running the task, so a stopping worker finds its own rows.
    worker = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The API's "my tasks, newest first", optionally by status.
            models.Index(fields=["owner", "-created_at"], name="task_owner_created_idx"),
            models.Index(fields=["owner", "status", "-created_at"], name="task_owner_status_idx"),
            # The dispatcher's claim (services.dispatch_pending_tasks), one index per half:
            # pending tasks due at once, oldest first, and pending tasks waiting for a
            # run_at (a delayed create, a retry's backoff), earliest first. Each half is
            # read up to its limit and no further, so tasks waiting for a later run_at are
            # never walked. Partial: small however many tasks have finished.
            # The previous release's claim index, kept one release for its dispatchers
            # during a rolling deploy (migration 0006); the next release drops it.
            models.Index(
                fields=["created_at"],
                name="task_pending_idx",
                condition=models.Q(status="pending"),
            ),
            models.Index(
                fields=["created_at"],
                name="task_pending_now_idx",
                condition=models.Q(status="pending", run_at__isnull=True),
            ),
            models.Index(
                fields=["run_at"],
                name="task_pending_later_idx",
                condition=models.Q(status="pending", run_at__isnull=False),
            ),
            # The resend sweep (queued) and the reaper (in_progress).
            models.Index(
                fields=["status", "queued_at"],
                name="task_active_idx",
                condition=models.Q(status__in=["queued", "in_progress"]),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__gte=0, progress__lte=100),
                name="task_progress_0_100",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=TaskStatus.values), name="task_status_valid"
            ),
        ]
        permissions = [
            # The operators' view's drain (taskhub/ops.py): it stops a worker taking work
            # for everyone, so it is granted apart from changing tasks.
            ("drain_worker", "Can drain a Celery worker (operators' view)"),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` on a create: the same key from the same owner within
    TASKHUB_IDEMPOTENCY_KEY_HOURS returns the first task instead of making a second one
    (docs/api.md "Idempotent creates"). The unique (owner, key) is what makes two racing
    requests on two web processes end with one task."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys"
    )
    key = models.CharField(max_length=255)
    # SHA-256 of the request's canonical body: the same key with another body is refused.
    request_hash = models.CharField(max_length=64)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="idempotency_keys")
    # The status code the first request was answered with, replayed to a retry.
    response_status = models.PositiveSmallIntegerField(default=201)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "key"], name="idempotency_key_per_owner"),
        ]

    def __str__(self) -> str:
        return f"{self.key} -> {self.task_id}"
