"""Every read of webhooks, scoped to the user asking."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import QuerySet
from django.http import Http404

from webhooks.models import DeliveryState, WebhookDelivery, WebhookSettings


def default_url_of(*, user_id: int) -> str:
    """The user's default callback URL, "" if they set none.

    Read on every terminal status of a task that names no URL of its own, in the worker's
    transaction (services.delivery_enqueue_for_change), so on the drain's hot path: the
    ORM's `.filter().values_list().first()` spent 0.49 ms per call (building, compiling,
    ordering for first()), this statement 0.16 ms, the round trip included
    (docs/benchmarks.md, "Drain: what limits it")."""
    meta = WebhookSettings._meta
    url = meta.get_field("default_url").column
    user = meta.get_field("user").column
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT "{url}" FROM "{meta.db_table}" WHERE "{user}" = %s',  # noqa: S608 (_meta names only)
            [user_id],
        )
        row = cursor.fetchone()
    return row[0] if row else ""


def deliveries_for_task(*, user: AbstractBaseUser, task_id: UUID | str) -> QuerySet:
    """The deliveries of the user's task with their attempts, newest first (the task's
    own 404 comes from tasks.selectors.task_get_for first)."""
    return (
        WebhookDelivery.objects.filter(owner=user, task_id=task_id)
        .prefetch_related("attempt_log")
        .order_by("-created_at")
    )


def delivery_get_for(
    *, user: AbstractBaseUser, task_id: UUID | str, delivery_id: UUID | str
) -> WebhookDelivery:
    """The user's delivery of that task, or Http404 (also for another user's)."""
    found = (
        WebhookDelivery.objects.filter(owner=user, task_id=task_id, pk=delivery_id)
        .select_related("task")
        .first()
    )
    if found is None:
        raise Http404("No such delivery.")
    return found


def deliveries_due(*, now: datetime, limit: int = 1000) -> list[UUID]:
    """Pending deliveries whose next attempt is due (the sweep's; the partial index
    webhook_delivery_due_idx answers it)."""
    return list(
        WebhookDelivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
