"""End to end: a real Celery worker runs a task whose callback_url is a real HTTP server on
127.0.0.1 that fails the first attempt; the worker retries and the receiver gets the task,
signed."""

from __future__ import annotations

import json

import pytest

from devserver import testing
from tasks import services as task_services
from webhooks import services
from webhooks.models import DeliveryState, WebhookDelivery


@pytest.fixture
def webhook_worker(transactional_db, purge_broker, allow_private):
    worker = testing.start_worker(
        # The worker's own settings: loopback receivers allowed, retries a fraction of a
        # second apart instead of 10 s.
        extra_env={"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_BACKOFF_BASE": "0.3"}
    )
    yield worker
    worker.stop()


@pytest.mark.e2e
def test_a_worker_completes_a_task_and_its_webhook_reaches_the_receiver_signed(
    alice, receiver, webhook_worker
):
    receiver.secret = services.webhook_settings_get_or_create(user_id=alice.pk).secret
    receiver.answers = [500, 200]

    task = task_services.task_create(
        owner=alice, title="hooked", kind="echo", params={"n": 7}, callback_url=receiver.url
    )

    def delivered():
        found = WebhookDelivery.objects.filter(task=task).first()
        return found if found and found.state == DeliveryState.DELIVERED else None

    delivery = testing.wait_until(delivered, timeout=60, message="the webhook delivered")
    assert [a.status_code for a in delivery.attempt_log.all()] == [500, 200]
    assert len(receiver.requests) == 2
    assert all(r.signature_valid for r in receiver.requests)
    body = json.loads(receiver.requests[-1].body)
    assert body["type"] == "task.completed"
    assert body["data"]["task"]["id"] == str(task.pk)
    assert body["data"]["task"]["status"] == "completed"
    assert body["data"]["task"]["result"] == {"n": 7}
