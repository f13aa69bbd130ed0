"""Celery tasks of the notifications app: adapters that call notifications.services."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from notifications import services
from taskhub.outages import skip_while_database_is_away


@shared_task(name="notifications.prune_old_events", ignore_result=True)
def prune_old_events() -> int:
    """Event retention (EVENT_RETENTION_DAYS), scheduled by beat (taskhub/celery.py)."""
    retention = timedelta(days=settings.TASKHUB_EVENT_RETENTION_DAYS)
    try:
        return services.events_prune(older_than=retention)
    except Exception as exc:
        skip_while_database_is_away(exc, "event pruning is skipped until it is back")
        return 0
