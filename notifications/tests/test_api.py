"""The inbox and the event log over HTTP, and the inbox entry a finished task leaves."""

from __future__ import annotations

import pytest

from notifications import services
from notifications.models import Event, Notification
from tasks import services as task_services
from tasks.models import TaskStatus

pytestmark = pytest.mark.django_db


def finish_task(owner, *, title="report", fail=False):
    task = task_services.task_create(owner=owner, title=title)
    task_services.dispatch_pending_tasks()
    task_services.task_start(task_id=task.pk, worker="test")
    if fail:
        return task_services.task_fail(task_id=task.pk, error="disk full")
    return task_services.task_complete(task_id=task.pk, result={"ok": True})


def test_a_finished_task_puts_one_notification_in_its_owners_inbox(alice):
    task = finish_task(alice, title="nightly report")
    [notification] = Notification.objects.filter(user=alice)
    assert notification.task_id == task.pk
    assert notification.title == "Task \u201cnightly report\u201d completed"
    assert notification.read_at is None


def test_the_notification_event_follows_the_terminal_task_event(alice):
    task = finish_task(alice, fail=True)
    types = list(Event.objects.filter(user=alice).order_by("seq").values_list("type", "seq"))
    assert [t for t, _ in types] == [
        "task.updated",
        "task.updated",
        "task.updated",
        "task.updated",
        "notification.new",
    ]
    note = Event.objects.get(user=alice, type="notification.new")
    assert note.data["body"] == "disk full"
    assert note.data["task_id"] == str(task.pk)
    assert [s for _, s in types] == [1, 2, 3, 4, 5]


def test_a_task_that_is_not_finished_leaves_no_notification(alice):
    task_services.task_create(owner=alice, title="waiting")
    assert not Notification.objects.exists()


def test_the_inbox_lists_newest_first_with_the_unread_count(alice, bob, client_for):
    services.notify(user_id=alice.pk, title="first")
    services.notify(user_id=alice.pk, title="second")
    services.notify(user_id=bob.pk, title="not alice's")
    response = client_for(alice).get("/api/notifications/")
    assert response.status_code == 200
    body = response.json()
    assert [n["title"] for n in body["results"]] == ["second", "first"]
    assert body["unread_count"] == 2
    assert body["count"] == 2


def test_marking_one_read_lowers_the_unread_count(alice, client_for):
    first = services.notify(user_id=alice.pk, title="first")
    services.notify(user_id=alice.pk, title="second")
    api = client_for(alice)
    response = api.post(f"/api/notifications/{first.pk}/read/")
    assert response.status_code == 200
    assert response.json()["read_at"] is not None
    assert api.get("/api/notifications/").json()["unread_count"] == 1
    unread = api.get("/api/notifications/?unread=true").json()["results"]
    assert [n["title"] for n in unread] == ["second"]


def test_bob_cannot_mark_alice_notification_read(alice, bob, client_for):
    notification = services.notify(user_id=alice.pk, title="private")
    response = client_for(bob).post(f"/api/notifications/{notification.pk}/read/")
    assert response.status_code == 404
    notification.refresh_from_db()
    assert notification.read_at is None


def test_read_all_marks_only_the_callers_notifications(alice, bob, client_for):
    services.notify(user_id=alice.pk, title="a1")
    services.notify(user_id=alice.pk, title="a2")
    services.notify(user_id=bob.pk, title="b1")
    response = client_for(alice).post("/api/notifications/read-all/")
    assert response.json() == {"marked": 2, "unread_count": 0}
    assert client_for(bob).get("/api/notifications/").json()["unread_count"] == 1


def test_the_inbox_needs_authentication(client_for):
    assert client_for(None).get("/api/notifications/").status_code == 401


def test_events_after_id_returns_the_users_later_events_as_envelopes(alice, bob, client_for):
    for n in range(5):
        services.publish(user_id=alice.pk, type="task.updated", data={"n": n})
    services.publish(user_id=bob.pk, type="task.updated", data={"n": "bob"})
    body = client_for(alice).get("/api/events/?after_id=2&limit=2").json()
    assert [e["id"] for e in body["results"]] == [3, 4]
    assert body["results"][0]["type"] == "task.updated"
    assert body["results"][0]["data"] == {"n": 2}
    assert body["has_more"] is True
    assert body["last_event_id"] == 5
    rest = client_for(alice).get("/api/events/?after_id=4").json()
    assert [e["id"] for e in rest["results"]] == [5]
    assert rest["has_more"] is False


@pytest.mark.parametrize(
    ("query", "field"),
    [("after_id=-1", "after_id"), ("after_id=x", "after_id"), ("limit=0", "limit"),
     ("limit=100000", "limit")],
)  # fmt: skip
def test_bad_event_queries_are_a_400_naming_the_parameter(alice, client_for, query, field):
    response = client_for(alice).get(f"/api/events/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_a_tasks_events_are_listed_for_its_owner(alice, client_for):
    task = finish_task(alice)
    body = client_for(alice).get(f"/api/tasks/{task.pk}/events/").json()
    statuses = [e["data"].get("status") for e in body["results"] if e["type"] == "task.updated"]
    assert statuses == [
        TaskStatus.PENDING,
        TaskStatus.QUEUED,
        TaskStatus.IN_PROGRESS,
        TaskStatus.COMPLETED,
    ]


def test_bob_gets_a_404_for_alice_task_events(alice, bob, client_for):
    task = finish_task(alice)
    assert client_for(bob).get(f"/api/tasks/{task.pk}/events/").status_code == 404
