"""The webhook outbox (docs/webhooks.md).

A WebhookDelivery is written in the same transaction as the terminal status change it
reports (webhooks.services.delivery_enqueue, called through tasks.extensions), so a
committed change always has its row and a rolled-back one never does. Celery delivers it
after commit; a beat sweep finds the rows whose message was lost. Each HTTP attempt is a
WebhookAttempt.
"""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


def new_signing_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


class WebhookSettings(models.Model):
    """A user's webhook defaults: the URL their tasks call back when a task names none,
    and the secret every delivery to them is signed with."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_settings"
    )
    default_url = models.URLField(max_length=2000, blank=True, default="")
    secret = models.CharField(max_length=100, default=new_signing_secret)
    secret_rotated_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "webhook settings"
        verbose_name_plural = "webhook settings"

    def __str__(self) -> str:
        return f"webhook settings of {self.user}"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    # Gave up: no 2xx within the retry window (WEBHOOK_RETRY_WINDOW, 24 h).
    FAILED = "failed", "Failed (gave up)"


class WebhookDelivery(models.Model):
    """One event owed to one URL: the outbox row."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The event's id, in the payload and the X-TaskHub-Event-Id header: a redelivery
    # carries the same one, so a receiver can drop what it already handled.
    event_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    # SET_NULL, not CASCADE: an operator deleting a task right after it finished must not
    # take back the webhook it owes. The payload holds the task as it was; a delivery whose
    # task is gone is still sent, and kept in the admin.
    task = models.ForeignKey(
        "tasks.Task",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="webhook_deliveries",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    url = models.URLField(max_length=2000)
    event = models.CharField(max_length=32)  # task.completed, task.failed, task.cancelled
    task_status = models.CharField(max_length=20)
    # The task as it was when the change committed (the POST body's "data"), not as it is
    # when the delivery happens.
    payload = models.JSONField()
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due (pending only). While an attempt is in flight it is
    # pushed out by a lease, so the sweep does not start a second one.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    give_up_at = models.DateTimeField()
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    redelivery_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="redeliveries"
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sweep's query: pending rows whose next attempt is due. Partial, so the
            # delivered and failed rows (nearly all of them) cost it nothing.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(state="pending"),
                name="webhook_delivery_due_idx",
            ),
            models.Index(fields=["task", "-created_at"], name="webhook_delivery_task_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} of task {self.task_id} to {self.url} ({self.state})"


class WebhookAttempt(models.Model):
    """One HTTP request of a delivery and what came of it."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    # None: no HTTP answer (refused URL, connection error, timeout).
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_once")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
