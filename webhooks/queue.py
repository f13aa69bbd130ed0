"""Every Celery message of webhooks (after commit only; by task name, never importing
webhooks.tasks, which imports services). A message that cannot be sent (Redis down) is
logged, never raised: the pending row is the truth and the beat sweep
(webhooks.sweep_due_deliveries) sends it again once it is due."""

from __future__ import annotations

from uuid import UUID

from taskhub.celery import send_task
from taskhub.outages import REDIS, is_redis_outage

DELIVER_WEBHOOK = "webhooks.deliver_webhook"
SWEEP_DUE_DELIVERIES = "webhooks.sweep_due_deliveries"


def send_deliver(delivery_id: UUID | str, *, countdown: float | None = None) -> None:
    try:
        send_task(DELIVER_WEBHOOK, args=[str(delivery_id)], countdown=countdown)
    except Exception as exc:
        if not is_redis_outage(exc):
            raise
        REDIS.failed(exc, "webhook deliveries wait for the sweep")
        return
    REDIS.recovered()
