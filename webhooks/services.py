"""Every write of webhooks: the outbox row, an attempt and its outcome, a redelivery, the
user's settings (docs/webhooks.md)."""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from notifications import protocol
from tasks.api.serializers import TaskOutputSerializer
from tasks.models import TERMINAL_STATUSES, Task
from webhooks import client, queue, selectors, signing, urlguard
from webhooks.models import (
    DeliveryState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSettings,
    new_signing_secret,
)

logger = logging.getLogger("webhooks")

USER_AGENT = "TaskHub-Webhooks/1"
# While an attempt is in flight its row's next_attempt_at is pushed this far past the
# request's timeout, so the sweep does not start a second attempt; if the worker dies
# mid-request, the sweep tries again after it.
LEASE_MARGIN = timedelta(seconds=60)
# A retry further off than this is left to the sweep rather than sent as a Celery
# countdown: Redis hands an unacknowledged message to another worker after its
# visibility timeout (1 h), and a worker holds countdown messages in memory.
COUNTDOWN_LIMIT = 300.0
_jitter = random.Random()  # noqa: S311 (spreads retries out, not a secret)


# --- Settings ----------------------------------------------------------------------------


def webhook_settings_get_or_create(*, user_id: int) -> WebhookSettings:
    found = WebhookSettings.objects.filter(user_id=user_id).first()
    if found is not None:
        return found
    with transaction.atomic():
        found, _ = WebhookSettings.objects.get_or_create(user_id=user_id)
    return found


def webhook_settings_update(*, user: AbstractBaseUser, default_url: str) -> WebhookSettings:
    """Set the user's default callback URL ("" for none); ValidationError if refused."""
    if default_url:
        urlguard.url_validate(default_url, field="default_url")
    with transaction.atomic():
        found, _ = WebhookSettings.objects.select_for_update().get_or_create(user_id=user.pk)
        found.default_url = default_url
        found.save(update_fields=["default_url", "updated_at"])
    return found


def webhook_secret_rotate(*, user: AbstractBaseUser) -> WebhookSettings:
    """A new signing secret, used from the next attempt on (pending deliveries included);
    the old one stops working at once."""
    with transaction.atomic():
        found, _ = WebhookSettings.objects.select_for_update().get_or_create(user_id=user.pk)
        found.secret = new_signing_secret()
        found.secret_rotated_at = timezone.now()
        found.save(update_fields=["secret", "secret_rotated_at", "updated_at"])
    return found


# --- The outbox --------------------------------------------------------------------------


EVENT_TYPES = {status: f"task.{status.value}" for status in TERMINAL_STATUSES}


def payload_build(task: Task, *, event_id: UUID, event: str) -> dict[str, Any]:
    """The POST body (docs/webhooks.md, "The request"): the task as the REST API shows it."""
    return {
        "id": str(event_id),
        "type": event,
        "created_at": protocol.format_ts(timezone.now()),
        "data": {"task": dict(TaskOutputSerializer(task).data)},
    }


def delivery_enqueue_for_change(task: Task, previous_status: str) -> None:
    """tasks.extensions' status listener: in the transaction of the change, the outbox row
    of a terminal status (completed, failed, cancelled) of an owned task with a callback
    URL (its own, else its owner's default). An automatic retry (in_progress -> pending)
    is not terminal and sends nothing."""
    if task.status not in TERMINAL_STATUSES or task.owner_id is None:
        return
    url = task.callback_url or selectors.default_url_of(user_id=task.owner_id)
    if not url:
        return
    delivery_create(task=task, url=url)


def delivery_create(
    *,
    task: Task | None,
    url: str,
    now: datetime | None = None,
    event_id: UUID | None = None,
    payload: dict[str, Any] | None = None,
    redelivery_of: WebhookDelivery | None = None,
) -> WebhookDelivery:
    """Write a pending delivery (in the caller's transaction, if any) and send its first
    attempt after commit. `task` is None only for a redelivery whose task was deleted."""
    if task is None and redelivery_of is None:
        raise ValueError("a first delivery needs its task")
    now = now or timezone.now()
    event = EVENT_TYPES[task.status] if redelivery_of is None else redelivery_of.event
    event_id = event_id or uuid4()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(
            event_id=event_id,
            task=task,
            owner_id=task.owner_id if task is not None else redelivery_of.owner_id,
            url=url,
            event=event,
            task_status=task.status if redelivery_of is None else redelivery_of.task_status,
            payload=payload or payload_build(task, event_id=event_id, event=event),
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=settings.TASKHUB_WEBHOOK_RETRY_WINDOW),
            created_at=now,
            redelivery_of=redelivery_of,
        )
        delivery_id = delivery.pk
        transaction.on_commit(lambda: queue.send_deliver(delivery_id), robust=True)
    return delivery


def delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send the same event again: a new delivery (same event id and payload, a fresh
    retry window), so the first one's attempts stay as they were."""
    return delivery_create(
        task=delivery.task,
        url=delivery.url,
        event_id=delivery.event_id,
        payload=delivery.payload,
        redelivery_of=delivery,
    )


# --- Attempts ----------------------------------------------------------------------------


def retry_delay(attempt: int) -> float:
    """Seconds before the attempt after `attempt`: WEBHOOK_BACKOFF_BASE doubled each time,
    capped at WEBHOOK_BACKOFF_MAX, with +-20 % jitter so a receiver that was down does not
    get every owed delivery in the same second."""
    base = settings.TASKHUB_WEBHOOK_BACKOFF_BASE * 2 ** min(attempt - 1, 30)
    return min(base, settings.TASKHUB_WEBHOOK_BACKOFF_MAX) * _jitter.uniform(0.8, 1.2)


def delivery_claim(*, delivery_id: UUID | str, now: datetime) -> WebhookDelivery | None:
    """Take a due pending delivery for one attempt, or None (not due, done, or another
    worker has it: a duplicate message or the sweep's copy is a no-op)."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now)
            .first()
        )
        if delivery is None:
            return None
        delivery.attempts += 1
        lease = timedelta(seconds=settings.TASKHUB_WEBHOOK_TIMEOUT) + LEASE_MARGIN
        delivery.next_attempt_at = now + lease
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    return delivery


def delivery_attempt(
    *, delivery_id: UUID | str, now: datetime | None = None
) -> WebhookDelivery | None:
    """One attempt of a due delivery: claim, POST (outside any transaction), record.
    `now` is the scheduling clock (tests move it); the signature's timestamp is always
    the real time, which is what the receiver compares it with."""
    now = now or timezone.now()
    delivery = delivery_claim(delivery_id=delivery_id, now=now)
    if delivery is None:
        return None
    secret = webhook_settings_get_or_create(user_id=delivery.owner_id).secret
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-TaskHub-Event": delivery.event,
        "X-TaskHub-Event-Id": str(delivery.event_id),
        "X-TaskHub-Delivery": str(delivery.pk),
        "X-TaskHub-Attempt": str(delivery.attempts),
        signing.SIGNATURE_HEADER: signing.sign(secret, body, timestamp=int(time.time())),
    }
    status_code, error = None, ""
    started = time.monotonic()
    try:
        target = urlguard.delivery_target(delivery.url)
        answer = client.post(
            target, body=body, headers=headers, timeout=settings.TASKHUB_WEBHOOK_TIMEOUT
        )
        status_code = answer.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {answer.excerpt[:500]}".strip()
    except urlguard.UrlRefused as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000] or type(exc).__name__
    except SoftTimeLimitExceeded:
        # httpx's timeouts are per read: a receiver that trickles its answer could hold the
        # worker past them. Celery's soft limit (CELERY_TASK_SOFT_TIME_LIMIT) ends it; the
        # attempt is still recorded, and retried like any failure.
        error = "no complete answer within the delivery task's time limit"
    latency_ms = round((time.monotonic() - started) * 1000)
    return delivery_record_attempt(
        delivery_id=delivery.pk,
        number=delivery.attempts,
        started_at=now,
        status_code=status_code,
        latency_ms=latency_ms,
        error=error,
    )


def delivery_record_attempt(
    *,
    delivery_id: UUID | str,
    number: int,
    started_at: datetime,
    status_code: int | None,
    latency_ms: int,
    error: str,
) -> WebhookDelivery:
    """Store the attempt and its outcome: delivered on a 2xx; otherwise the next attempt
    after retry_delay(), or failed (gave up) if that would fall past the retry window."""
    now = started_at + timedelta(milliseconds=latency_ms)
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=started_at,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
        )
        fields = ["state", "next_attempt_at", "last_error"]
        delivered = status_code is not None and 200 <= status_code < 300
        if delivery.attempts != number or delivery.state != DeliveryState.PENDING:
            # A late outcome: this attempt outlived its lease (a worker frozen mid-request)
            # and the sweep has claimed a later one since, or that one already settled the
            # delivery. A late failure is history only: it must not undo a delivered
            # webhook or schedule another retry. A late success still counts: the receiver
            # has the event, whatever the later attempt says.
            logger.warning(
                "webhook %s attempt %s ended after attempt %s was claimed",
                delivery_id,
                number,
                delivery.attempts,
            )
            if not delivered or delivery.state == DeliveryState.DELIVERED:
                return delivery
        if delivered:
            delivery.state = DeliveryState.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            delivery.last_error = ""
            fields.append("delivered_at")
        else:
            delivery.last_error = error
            delay = retry_delay(number)
            if now + timedelta(seconds=delay) > delivery.give_up_at:
                delivery.state = DeliveryState.FAILED
                delivery.next_attempt_at = None
                logger.warning(
                    "webhook %s of task %s gave up after %s attempts: %s",
                    delivery.pk,
                    delivery.task_id,
                    number,
                    error,
                )
            else:
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                if delay <= COUNTDOWN_LIMIT:
                    transaction.on_commit(
                        lambda: queue.send_deliver(delivery_id, countdown=delay), robust=True
                    )
        delivery.save(update_fields=fields)
    logger.info(
        "webhook %s attempt %s: %s (%s ms) -> %s",
        delivery_id,
        number,
        status_code or error,
        latency_ms,
        delivery.state,
    )
    return delivery
