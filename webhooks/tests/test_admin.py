"""Operators see deliveries with their attempts and can redeliver, through the service."""

from __future__ import annotations

import pytest

from tasks import services as task_services
from tasks.models import TaskStatus
from tasks.tests.factories import make_task
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sent_messages")]


@pytest.fixture
def delivery(alice, monkeypatch):
    from webhooks import urlguard

    monkeypatch.setattr(urlguard, "resolve", lambda host, port: ["93.184.215.14"])
    task = make_task(
        owner=alice, status=TaskStatus.IN_PROGRESS, callback_url="https://hooks.example.com/a"
    )
    task_services.task_complete(task_id=task.pk, result=None)
    found = WebhookDelivery.objects.get(task=task)
    services.delivery_claim(delivery_id=found.pk, now=found.created_at)
    services.delivery_record_attempt(
        delivery_id=found.pk,
        number=1,
        started_at=found.created_at,
        status_code=503,
        latency_ms=31,
        error="HTTP 503: maintenance window",
    )
    return found


def test_a_delivery_page_shows_its_attempts(operator, delivery):
    page = operator.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/")

    assert page.status_code == 200
    text = page.content.decode()
    assert "HTTP 503: maintenance window" in text and "503" in text


def test_the_list_shows_state_and_the_secret_is_not_in_the_admin(operator, delivery, alice):
    secret = services.webhook_settings_get_or_create(user_id=alice.pk).secret

    listing = operator.get("/admin/webhooks/webhookdelivery/").content.decode()
    settings_page = operator.get("/admin/webhooks/webhooksettings/").content.decode()

    assert "hooks.example.com" in listing and "Pending" in listing
    assert secret not in settings_page


def test_the_redeliver_action_makes_a_new_delivery(operator, delivery, sent_messages):
    response = operator.post(
        "/admin/webhooks/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [str(delivery.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    again = WebhookDelivery.objects.get(redelivery_of=delivery)
    assert again.event_id == delivery.event_id and again.state == "pending"
    assert sent_messages[-1] == (str(again.pk), None)
