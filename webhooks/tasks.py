"""Celery tasks of webhooks: thin adapters over webhooks.services (names: webhooks.queue).

Both run on the default `celery` queue, which `make run`'s task worker consumes: a
delivery waits on a receiver for up to WEBHOOK_TIMEOUT seconds, which must not hold up
the one-process `dispatch` worker."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from webhooks import queue, selectors, services


@shared_task(name=queue.DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook(delivery_id: str) -> None:
    services.delivery_attempt(delivery_id=delivery_id)


@shared_task(name=queue.SWEEP_DUE_DELIVERIES, ignore_result=True)
def sweep_due_deliveries() -> int:
    """Scheduled by beat (taskhub/celery.py): a message for each pending delivery whose
    attempt is due, for the ones whose message was lost (Redis down, a worker killed) or
    whose retry was too far off for a countdown. A duplicate is harmless: the claim
    (services.delivery_claim) lets one attempt through."""
    due = selectors.deliveries_due(now=timezone.now())
    for delivery_id in due:
        queue.send_deliver(delivery_id)
    return len(due)
