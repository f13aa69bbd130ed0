"""Celery tasks of webhooks: thin adapters over webhooks.services (names: webhooks.queue).

Both run on the default `celery` queue, which `make run`'s task worker consumes: a
delivery waits on a receiver for up to WEBHOOK_TIMEOUT seconds, which must not hold up
the one-process `dispatch` worker."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from taskhub.outages import skip_while_database_is_away
from webhooks import queue, selectors, services


@shared_task(name=queue.DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook(delivery_id: str) -> None:
    try:
        services.delivery_attempt(delivery_id=delivery_id)
    except Exception as exc:
        # Nothing recorded: the delivery stays pending, due again when its claim's lease
        # ends, and the sweep sends it once PostgreSQL is back. A POST made before the
        # outage met the record is then sent again: receivers key on X-TaskHub-Event-Id
        # (docs/webhooks.md, "Deliveries may arrive more than once").
        skip_while_database_is_away(exc, "webhook deliveries wait for the sweep")


@shared_task(name=queue.SWEEP_DUE_DELIVERIES, ignore_result=True)
def sweep_due_deliveries() -> int:
    """Scheduled by beat (taskhub/celery.py): a message for each pending delivery whose
    attempt is due, for the ones whose message was lost (Redis down, a worker killed) or
    whose retry was too far off for a countdown. A duplicate is harmless: the claim
    (services.delivery_claim) lets one attempt through."""
    try:
        due = selectors.deliveries_due(now=timezone.now())
    except Exception as exc:
        skip_while_database_is_away(exc, "webhook sweeps are skipped until it is back")
        return 0
    for delivery_id in due:
        queue.send_deliver(delivery_id)
    return len(due)
