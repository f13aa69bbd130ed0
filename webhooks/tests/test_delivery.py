"""Deliveries against a real HTTP server on 127.0.0.1: attempts recorded, backoff, giving
up after the window, redelivery. The scheduling clock is passed in (`now`), never slept."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks import services as task_services
from tasks.models import TaskStatus
from tasks.tests.factories import make_task
from webhooks import selectors, services
from webhooks.models import DeliveryState, WebhookDelivery
from webhooks.tests.conftest import verify_taskhub_signature

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("allow_private")]


@pytest.fixture
def completed_delivery(alice, receiver, sent_messages):
    receiver.secret = services.webhook_settings_get_or_create(user_id=alice.pk).secret
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, callback_url=receiver.url)
    task_services.task_complete(task_id=task.pk, result={"answer": 42})
    return WebhookDelivery.objects.get(task=task)


def test_500_twice_then_200_is_three_recorded_attempts_and_delivered(
    completed_delivery, receiver, sent_messages
):
    receiver.answers = [500, 500, 200]
    now = completed_delivery.created_at

    for _ in range(3):
        delivery = services.delivery_attempt(delivery_id=completed_delivery.pk, now=now)
        now = delivery.next_attempt_at or now

    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 3
    assert delivery.delivered_at is not None and delivery.last_error == ""
    attempts = list(delivery.attempt_log.all())
    assert [a.status_code for a in attempts] == [500, 500, 200]
    assert [a.number for a in attempts] == [1, 2, 3]
    assert all(a.latency_ms >= 0 for a in attempts)
    assert attempts[0].error == "HTTP 500: answer 500" and attempts[2].error == ""
    # The receiver got three signed POSTs of the same event, each verified with the
    # documented snippet and the owner's secret.
    assert len(receiver.requests) == 3
    assert all(r.signature_valid for r in receiver.requests)
    assert {r.headers["X-TaskHub-Event-Id"] for r in receiver.requests} == {str(delivery.event_id)}
    assert [r.headers["X-TaskHub-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    body = json.loads(receiver.requests[0].body)
    assert body["type"] == "task.completed"
    assert body["data"]["task"]["result"] == {"answer": 42}
    assert receiver.requests[0].path == "/hook"


def test_a_failed_attempt_waits_with_exponential_backoff(completed_delivery, receiver, settings):
    settings.TASKHUB_WEBHOOK_BACKOFF_BASE = 10
    receiver.answers = [503]
    now = completed_delivery.created_at
    waits = []

    for _ in range(4):
        delivery = services.delivery_attempt(delivery_id=completed_delivery.pk, now=now)
        recorded = delivery.attempt_log.last()
        finished = recorded.started_at + timedelta(milliseconds=recorded.latency_ms)
        waits.append((delivery.next_attempt_at - finished).total_seconds())
        now = delivery.next_attempt_at

    for wait, base in zip(waits, [10, 20, 40, 80], strict=True):
        assert base * 0.8 <= wait <= base * 1.2, waits
    assert delivery.state == DeliveryState.PENDING


def test_an_attempt_before_it_is_due_or_twice_is_a_no_op(completed_delivery, receiver):
    receiver.answers = [500]
    now = completed_delivery.created_at
    assert services.delivery_attempt(delivery_id=completed_delivery.pk, now=now) is not None

    # A duplicate message (or the sweep's copy) for the same due time finds nothing to claim.
    assert services.delivery_attempt(delivery_id=completed_delivery.pk, now=now) is None
    assert len(receiver.requests) == 1


def test_an_attempt_that_outlived_its_lease_cannot_undo_the_next_ones_outcome(
    completed_delivery, receiver
):
    """Attempt 1's worker froze past its lease; the sweep claimed attempt 2, which was
    delivered. Attempt 1's failure, recorded last, used to turn the delivery back to
    pending and send the webhook a third time."""
    now = completed_delivery.created_at
    frozen = services.delivery_claim(delivery_id=completed_delivery.pk, now=now)
    after_the_lease = frozen.next_attempt_at
    receiver.answers = [200]
    services.delivery_attempt(delivery_id=completed_delivery.pk, now=after_the_lease)

    late = services.delivery_record_attempt(
        delivery_id=completed_delivery.pk,
        number=frozen.attempts,
        started_at=now,
        status_code=None,
        latency_ms=70_000,
        error="read timeout",
    )

    assert late.state == DeliveryState.DELIVERED and late.next_attempt_at is None
    assert late.last_error == ""
    assert [(a.number, a.error) for a in late.attempt_log.order_by("number")] == [
        (1, "read timeout"),
        (2, ""),
    ]
    assert services.delivery_attempt(delivery_id=completed_delivery.pk, now=after_the_lease) is None
    assert len(receiver.requests) == 1


def test_a_late_success_counts_even_after_a_later_attempt_failed(completed_delivery, receiver):
    """The receiver has the event: the delivery is delivered, and no more retries go out."""
    now = completed_delivery.created_at
    frozen = services.delivery_claim(delivery_id=completed_delivery.pk, now=now)
    receiver.answers = [500]
    services.delivery_attempt(delivery_id=completed_delivery.pk, now=frozen.next_attempt_at)

    late = services.delivery_record_attempt(
        delivery_id=completed_delivery.pk,
        number=frozen.attempts,
        started_at=now,
        status_code=200,
        latency_ms=70_000,
        error="",
    )

    assert late.state == DeliveryState.DELIVERED and late.next_attempt_at is None
    assert late.last_error == ""


def test_a_task_deleted_before_its_webhook_went_out_still_sends_it(completed_delivery, receiver):
    """An operator cleaning up right after the task finished used to take the pending
    delivery with it (CASCADE): the receiver never heard of the completion."""
    task_services.task_delete(task_id=completed_delivery.task_id)
    receiver.answers = [200]

    delivery = services.delivery_attempt(
        delivery_id=completed_delivery.pk, now=completed_delivery.created_at
    )

    assert delivery.task is None and delivery.state == DeliveryState.DELIVERED
    body = json.loads(receiver.requests[0].body)
    assert body["data"]["task"]["result"] == {"answer": 42}  # as it was when it finished
    again = services.delivery_redeliver(delivery=delivery)  # the admin's action still works
    assert (again.task, again.owner_id, again.event_id) == (
        None,
        delivery.owner_id,
        delivery.event_id,
    )


def test_it_gives_up_when_the_next_wait_would_end_past_the_window(completed_delivery, receiver):
    receiver.answers = [500]
    near_the_end = completed_delivery.give_up_at - timedelta(seconds=1)
    # Due "now" by the injected clock: the retries in between are skipped, not slept.
    WebhookDelivery.objects.filter(pk=completed_delivery.pk).update(next_attempt_at=near_the_end)

    delivery = services.delivery_attempt(delivery_id=completed_delivery.pk, now=near_the_end)

    assert delivery.state == DeliveryState.FAILED and delivery.next_attempt_at is None
    assert delivery.last_error == "HTTP 500: answer 500"
    assert selectors.deliveries_due(now=near_the_end + timedelta(days=7)) == []
    # Given up: no more attempts, whatever asks.
    later = near_the_end + timedelta(hours=1)
    assert services.delivery_attempt(delivery_id=completed_delivery.pk, now=later) is None


def test_the_window_is_24_hours(completed_delivery):
    assert completed_delivery.give_up_at - completed_delivery.created_at == timedelta(hours=24)


def test_a_redirect_is_not_followed(completed_delivery, receiver):
    receiver.answers = [302]
    receiver.extra_headers = {"Location": "http://169.254.169.254/latest/meta-data/"}

    delivery = services.delivery_attempt(delivery_id=completed_delivery.pk)

    assert delivery.state == DeliveryState.PENDING
    assert delivery.attempt_log.get().status_code == 302
    assert len(receiver.requests) == 1


def test_a_closed_port_is_an_attempt_with_an_error_and_no_status(alice, sent_messages):
    task = make_task(
        owner=alice, status=TaskStatus.IN_PROGRESS, callback_url="http://127.0.0.1:9/x"
    )
    task_services.task_complete(task_id=task.pk, result=None)

    delivery = services.delivery_attempt(delivery_id=WebhookDelivery.objects.get(task=task).pk)

    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None and attempt.error.startswith("ConnectError")


def test_redeliver_sends_the_same_event_again_as_a_new_delivery(
    completed_delivery, receiver, sent_messages
):
    first = services.delivery_attempt(delivery_id=completed_delivery.pk)
    assert first.state == DeliveryState.DELIVERED

    again = services.delivery_redeliver(delivery=first)
    again = services.delivery_attempt(delivery_id=again.pk)

    assert again.pk != first.pk and again.redelivery_of_id == first.pk
    assert again.event_id == first.event_id and again.payload == first.payload
    assert again.state == DeliveryState.DELIVERED
    assert [r.headers["X-TaskHub-Event-Id"] for r in receiver.requests] == [str(first.event_id)] * 2
    first.refresh_from_db()
    assert first.attempt_log.count() == 1  # the first one's history is untouched


def test_a_rotated_secret_signs_the_next_attempt(completed_delivery, receiver, alice):
    receiver.answers = [500, 200]
    services.delivery_attempt(delivery_id=completed_delivery.pk)
    old_secret = receiver.secret
    receiver.secret = services.webhook_secret_rotate(user=alice).secret

    services.delivery_attempt(
        delivery_id=completed_delivery.pk, now=timezone.now() + timedelta(hours=1)
    )

    first, second = receiver.requests
    assert first.signature_valid and second.signature_valid
    assert receiver.secret != old_secret
    assert not verify_taskhub_signature(
        old_secret, second.headers["X-TaskHub-Signature"], second.body
    )


def test_the_sweep_sends_what_is_due_and_only_that(completed_delivery, sent_messages):
    from webhooks.tasks import sweep_due_deliveries

    sent_messages.clear()
    WebhookDelivery.objects.filter(pk=completed_delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    assert sweep_due_deliveries() == 1
    assert sent_messages == [(str(completed_delivery.pk), None)]

    WebhookDelivery.objects.filter(pk=completed_delivery.pk).update(
        next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    assert sweep_due_deliveries() == 0


def test_an_attempt_cut_by_the_task_time_limit_is_recorded_and_retried(
    completed_delivery, monkeypatch
):
    from celery.exceptions import SoftTimeLimitExceeded

    from webhooks import client

    def trickling(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(client, "post", trickling)

    delivery = services.delivery_attempt(delivery_id=completed_delivery.pk)

    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None and "time limit" in attempt.error
    assert delivery.state == DeliveryState.PENDING and delivery.next_attempt_at is not None
