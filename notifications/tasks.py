"""Celery tasks of the notifications app."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from notifications.models import Event


@shared_task(name="notifications.prune_old_events", ignore_result=True)
def prune_old_events() -> int:
    """Delete events older than EVENT_RETENTION_DAYS; a client further behind re-reads
    state over REST instead of resuming."""
    cutoff = timezone.now() - timedelta(days=settings.TASKHUB_EVENT_RETENTION_DAYS)
    deleted, _ = Event.objects.filter(created_at__lt=cutoff).delete()
    return deleted
