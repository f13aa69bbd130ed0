"""The outbox row is written in the transaction of the terminal status change it reports:
committed with it, rolled back with it, and only for terminal statuses."""

from __future__ import annotations

import pytest
from django.db import transaction

from tasks import services as task_services
from tasks.models import TaskStatus
from tasks.tests.factories import make_task
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)

URL = "https://hooks.example.com/taskhub"


@pytest.fixture(autouse=True)
def public_hooks_resolve(monkeypatch):
    from webhooks import urlguard

    monkeypatch.setattr(urlguard, "resolve", lambda host, port: ["93.184.215.14"])


def test_a_completed_task_with_a_callback_url_has_its_delivery(alice, sent_messages):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, callback_url=URL)

    task_services.task_complete(task_id=task.pk, result={"words": 3})

    (delivery,) = WebhookDelivery.objects.filter(task=task)
    assert (delivery.url, delivery.event, delivery.state) == (URL, "task.completed", "pending")
    assert delivery.owner == alice and delivery.attempts == 0
    assert delivery.payload["type"] == "task.completed"
    assert delivery.payload["id"] == str(delivery.event_id)
    assert delivery.payload["data"]["task"]["status"] == "completed"
    assert delivery.payload["data"]["task"]["result"] == {"words": 3}
    # The first attempt is sent after commit.
    assert sent_messages == [(str(delivery.pk), None)]


def test_a_rolled_back_status_change_leaves_no_delivery_and_sends_nothing(alice, sent_messages):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, callback_url=URL)

    with pytest.raises(RuntimeError), transaction.atomic():
        task_services.task_fail(task_id=task.pk, error="boom")
        assert WebhookDelivery.objects.filter(task=task).count() == 1  # same transaction
        raise RuntimeError("the change is rolled back")

    assert WebhookDelivery.objects.filter(task=task).count() == 0
    assert sent_messages == []
    task.refresh_from_db()
    assert task.status == TaskStatus.IN_PROGRESS


@pytest.mark.parametrize(
    ("start", "to", "event"),
    [
        (TaskStatus.IN_PROGRESS, TaskStatus.FAILED, "task.failed"),
        (TaskStatus.PENDING, TaskStatus.CANCELLED, "task.cancelled"),
    ],
)
def test_each_terminal_status_has_its_event(alice, sent_messages, start, to, event):
    task = make_task(owner=alice, status=start, callback_url=URL)

    task_services.task_transition(task_id=task.pk, to=to)

    assert WebhookDelivery.objects.get(task=task).event == event


def test_non_terminal_changes_send_nothing(alice, sent_messages):
    task = task_services.task_create(owner=alice, title="t", kind="echo", callback_url=URL)
    task_services.task_transition(task_id=task.pk, to=TaskStatus.QUEUED)
    task_services.task_start(task_id=task.pk, worker="w1")
    # An automatic retry is in_progress -> pending (tasks.services.task_fail with attempts
    # left): not terminal either. The listener is asked directly, whatever the policy.
    task.status = TaskStatus.PENDING
    services.delivery_enqueue_for_change(task, TaskStatus.IN_PROGRESS)

    assert WebhookDelivery.objects.count() == 0


def test_the_owner_s_default_url_serves_a_task_without_one(alice, sent_messages):
    services.webhook_settings_update(user=alice, default_url="https://default.example.com/h")
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)

    task_services.task_complete(task_id=task.pk, result=None)

    assert WebhookDelivery.objects.get(task=task).url == "https://default.example.com/h"


def test_a_task_s_own_url_wins_over_the_default(alice, sent_messages):
    services.webhook_settings_update(user=alice, default_url="https://default.example.com/h")
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, callback_url=URL)

    task_services.task_complete(task_id=task.pk, result=None)

    assert WebhookDelivery.objects.get(task=task).url == URL


def test_no_url_or_no_owner_means_no_delivery(alice, sent_messages):
    mine = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)
    anonymous = make_task(owner=None, status=TaskStatus.IN_PROGRESS, callback_url=URL)

    task_services.task_complete(task_id=mine.pk, result=None)
    task_services.task_complete(task_id=anonymous.pk, result=None)

    assert WebhookDelivery.objects.count() == 0


def test_a_retried_task_that_ends_again_owes_a_second_delivery(alice, sent_messages):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, callback_url=URL)
    task_services.task_transition(task_id=task.pk, to=TaskStatus.CANCELLED)
    task_services.task_retry(task=task)
    task_services.task_transition(task_id=task.pk, to=TaskStatus.CANCELLED)

    assert WebhookDelivery.objects.filter(task=task).count() == 2
