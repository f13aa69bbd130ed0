"""The Django admin as an operator uses it."""

from __future__ import annotations

import pytest
from django.test import Client

from notifications.models import Event
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(django_user_model) -> Client:
    django_user_model.objects.create_superuser("operator", "op@example.com", "operator-pass-1")
    client = Client()
    client.login(username="operator", password="operator-pass-1")
    return client


def test_the_task_list_shows_status_kind_owner_and_progress(operator, alice):
    make_task(owner=alice, title="Resize photos", status=TaskStatus.IN_PROGRESS, progress=40)

    page = operator.get("/admin/tasks/task/?status__exact=in_progress").content.decode()

    assert "Resize photos" in page
    assert "In progress" in page
    assert "alice" in page
    assert "40" in page


def test_the_task_list_searches_by_title(operator, alice):
    make_task(owner=alice, title="Resize photos")
    make_task(owner=alice, title="Send invoices")

    page = operator.get("/admin/tasks/task/?q=invoices").content.decode()

    assert "Send invoices" in page
    assert "Resize photos" not in page


def test_adding_a_task_in_the_admin_goes_through_the_service(operator, alice):
    response = operator.post(
        "/admin/tasks/task/add/",
        {"owner": alice.pk, "title": "From admin", "description": "", "kind": "echo",
         "params": "{}", "timeout": 30},
    )  # fmt: skip

    assert response.status_code == 302, response.content.decode()[-2000:]
    task = Task.objects.get(title="From admin")
    assert task.status == TaskStatus.PENDING
    assert Event.objects.filter(task_id=task.pk, data__status="pending").exists()


def test_retry_and_cancel_actions(operator, alice):
    failed = make_task(owner=alice, title="failed one", status=TaskStatus.FAILED)
    pending = make_task(owner=alice, title="pending one")
    done = make_task(owner=alice, title="done one", status=TaskStatus.COMPLETED)

    operator.post("/admin/tasks/task/", {"action": "retry_tasks", "_selected_action": [failed.pk]})
    response = operator.post(
        "/admin/tasks/task/",
        {"action": "cancel_tasks", "_selected_action": [pending.pk, done.pk]},
        follow=True,
    )

    failed.refresh_from_db()
    pending.refresh_from_db()
    done.refresh_from_db()
    assert failed.status == TaskStatus.PENDING
    assert failed.attempts == 2
    assert pending.status == TaskStatus.CANCELLED
    assert done.status == TaskStatus.COMPLETED
    assert "already completed" in response.content.decode()


def test_timestamps_and_status_are_read_only(operator, alice):
    task = make_task(owner=alice, title="Resize photos")

    page = operator.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()

    assert 'name="title"' in page
    assert 'name="status"' not in page
    assert 'name="created_at"' not in page
