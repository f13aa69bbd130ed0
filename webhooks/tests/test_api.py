"""The webhook API: the user's settings and secret, a task's deliveries with their
attempts, redelivery; another user's task or delivery is a 404 (docs/webhooks.md)."""

from __future__ import annotations

import pytest

from tasks import services as task_services
from tasks.models import TaskStatus
from tasks.tests.factories import make_task
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sent_messages")]


@pytest.fixture(autouse=True)
def public_hooks_resolve(monkeypatch):
    from webhooks import urlguard

    monkeypatch.setattr(urlguard, "resolve", lambda host, port: ["93.184.215.14"])


@pytest.fixture
def alices_delivery(alice):
    task = make_task(
        owner=alice, status=TaskStatus.IN_PROGRESS, callback_url="https://hooks.example.com/a"
    )
    task_services.task_complete(task_id=task.pk, result={"secret": "alice's"})
    delivery = WebhookDelivery.objects.get(task=task)
    # One failed attempt, recorded as the worker records it (no receiver needed here).
    services.delivery_claim(delivery_id=delivery.pk, now=delivery.created_at)
    services.delivery_record_attempt(
        delivery_id=delivery.pk,
        number=1,
        started_at=delivery.created_at,
        status_code=500,
        latency_ms=12,
        error="HTTP 500: down",
    )
    return delivery


def test_settings_show_the_owner_a_secret_and_take_a_default_url(alice, bob, client_for):
    client = client_for(alice)

    shown = client.get("/api/webhooks/settings/").json()
    assert shown["default_url"] == "" and shown["secret"].startswith("whsec_")
    assert client.get("/api/webhooks/settings/").json()["secret"] == shown["secret"]

    put = client.put(
        "/api/webhooks/settings/", {"default_url": "https://hooks.example.com/d"}, format="json"
    )
    assert put.status_code == 200 and put.json()["default_url"] == "https://hooks.example.com/d"
    # Bob has a secret of his own.
    assert client_for(bob).get("/api/webhooks/settings/").json()["secret"] != shown["secret"]


def test_rotate_secret_gives_a_new_one(alice, client_for):
    client = client_for(alice)
    before = client.get("/api/webhooks/settings/").json()["secret"]

    rotated = client.post("/api/webhooks/settings/rotate-secret/")

    assert rotated.status_code == 200
    assert rotated.json()["secret"] != before
    assert client.get("/api/webhooks/settings/").json()["secret"] == rotated.json()["secret"]


def test_settings_need_a_user(client_for):
    assert client_for(None).get("/api/webhooks/settings/").status_code == 401


def test_a_create_takes_callback_url_and_shows_it(alice, client_for):
    response = client_for(alice).post(
        "/api/tasks/",
        {"title": "t", "kind": "echo", "callback_url": "https://hooks.example.com/t"},
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["callback_url"] == "https://hooks.example.com/t"


def test_a_create_refuses_a_url_that_is_not_http(alice, client_for):
    response = client_for(alice).post(
        "/api/tasks/", {"title": "t", "callback_url": "ftp://hooks.example.com/t"}, format="json"
    )

    assert response.status_code == 400
    assert list(response.json()) == ["callback_url"]


def test_the_owner_lists_a_task_s_deliveries_with_their_attempts(
    alice, client_for, alices_delivery
):
    response = client_for(alice).get(f"/api/tasks/{alices_delivery.task_id}/webhooks/")

    assert response.status_code == 200
    (delivery,) = response.json()
    assert delivery["id"] == str(alices_delivery.pk)
    assert (delivery["event"], delivery["state"], delivery["attempts"]) == (
        "task.completed",
        "pending",
        1,
    )
    assert delivery["attempt_log"] == [
        {
            "number": 1,
            "started_at": delivery["attempt_log"][0]["started_at"],
            "status_code": 500,
            "latency_ms": 12,
            "error": "HTTP 500: down",
        }
    ]
    assert delivery["payload"]["data"]["task"]["result"] == {"secret": "alice's"}


def test_redeliver_answers_202_with_a_new_delivery_of_the_same_event(
    alice, client_for, alices_delivery, sent_messages
):
    url = f"/api/tasks/{alices_delivery.task_id}/webhooks/{alices_delivery.pk}/redeliver/"

    response = client_for(alice).post(url)

    assert response.status_code == 202
    again = response.json()
    assert again["id"] != str(alices_delivery.pk)
    assert again["redelivery_of"] == str(alices_delivery.pk)
    assert again["event_id"] == str(alices_delivery.event_id)
    assert (again["state"], again["attempts"], again["attempt_log"]) == ("pending", 0, [])
    assert sent_messages[-1] == (again["id"], None)
    assert WebhookDelivery.objects.filter(task_id=alices_delivery.task_id).count() == 2


def test_bob_gets_404_for_alices_deliveries_even_through_his_own_task(
    bob, client_for, alices_delivery
):
    client = client_for(bob)
    bobs_task = make_task(owner=bob)

    listing = client.get(f"/api/tasks/{alices_delivery.task_id}/webhooks/")
    redeliver = client.post(
        f"/api/tasks/{alices_delivery.task_id}/webhooks/{alices_delivery.pk}/redeliver/"
    )
    through_his_task = client.post(
        f"/api/tasks/{bobs_task.pk}/webhooks/{alices_delivery.pk}/redeliver/"
    )

    assert [listing.status_code, redeliver.status_code, through_his_task.status_code] == [
        404,
        404,
        404,
    ]
    assert "alice" not in listing.content.decode() + redeliver.content.decode()
    assert client.get(f"/api/tasks/{bobs_task.pk}/webhooks/").json() == []
    assert WebhookDelivery.objects.count() == 1
