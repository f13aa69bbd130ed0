"""Deleting a task, in the admin or through the service: as visible to its owner as any
other change (tasks.services.task_delete; docs/protocol.md, `task.deleted`)."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from rest_framework.test import APIClient

from notifications.models import Event, Notification
from taskhub.exceptions import ConflictError
from tasks import services
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def listed_titles(api: APIClient) -> list[str]:
    return [task["title"] for task in api.get("/api/tasks/").json()["results"]]


def test_deleting_a_task_in_the_admin_tells_the_owner_and_clears_cached_reads(
    operator, alice, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, title="Old report", status=TaskStatus.COMPLETED)
    api = api_for(alice)
    assert api.get(f"/api/tasks/{task.pk}/").status_code == 200  # now cached
    assert listed_titles(api) == ["Old report"]  # the list page too
    inbox_before = Notification.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(f"/admin/tasks/task/{task.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Task.objects.filter(pk=task.pk).exists()
    assert api.get(f"/api/tasks/{task.pk}/").status_code == 404
    assert listed_titles(api) == []
    event = Event.objects.filter(user=alice).latest("seq")
    assert (event.type, event.task_id) == ("task.deleted", task.pk)
    assert event.data == {"task_id": str(task.pk), "title": "Old report", "status": "completed"}
    assert Notification.objects.count() == inbox_before  # a delete is no inbox news


def test_the_delete_action_deletes_each_selected_task_through_the_service(operator, alice, bob):
    mine = make_task(owner=alice, title="mine", status=TaskStatus.FAILED)
    queued = make_task(owner=bob, title="queued", status=TaskStatus.QUEUED)

    operator.post(
        "/admin/tasks/task/",
        {"action": "delete_selected", "_selected_action": [mine.pk, queued.pk], "post": "yes"},
    )

    assert not Task.objects.filter(pk__in=[mine.pk, queued.pk]).exists()
    deleted = Event.objects.filter(type="task.deleted").values_list("user__username", "task_id")
    assert sorted(deleted) == [("alice", mine.pk), ("bob", queued.pk)]


def test_a_running_task_has_no_delete_button_and_its_delete_is_refused(operator, alice):
    running = make_task(owner=alice, title="busy", status=TaskStatus.IN_PROGRESS)

    page = operator.get(f"/admin/tasks/task/{running.pk}/change/").content.decode()
    assert f"/admin/tasks/task/{running.pk}/delete/" not in page
    direct = operator.post(f"/admin/tasks/task/{running.pk}/delete/", {"post": "yes"})
    action = operator.post(
        "/admin/tasks/task/",
        {"action": "delete_selected", "_selected_action": [running.pk], "post": "yes"},
    )

    assert (direct.status_code, action.status_code) == (403, 403)
    assert Task.objects.filter(pk=running.pk).exists()
    assert not Event.objects.filter(type="task.deleted").exists()


def test_a_task_that_started_after_the_confirmation_is_not_deleted_and_the_page_says_so(
    operator, alice, monkeypatch
):
    task = make_task(owner=alice, title="racer", status=TaskStatus.PENDING)
    real_delete = services.task_delete

    def started_meanwhile(*, task_id):
        Task.objects.filter(pk=task_id).update(status=TaskStatus.IN_PROGRESS)
        return real_delete(task_id=task_id)

    monkeypatch.setattr(services, "task_delete", started_meanwhile)

    response = operator.post(f"/admin/tasks/task/{task.pk}/delete/", {"post": "yes"}, follow=True)

    assert Task.objects.filter(pk=task.pk).exists()
    assert response.redirect_chain[-1][0] == f"/admin/tasks/task/{task.pk}/change/"
    page = response.content.decode()
    assert "cancel it, and delete it once it has stopped" in page
    assert "was deleted successfully" not in page
    # The history does not say "Deleted" of a task that is still there.
    assert not LogEntry.objects.filter(object_id=str(task.pk), action_flag=DELETION).exists()


def test_the_delete_action_counts_and_logs_only_what_the_service_deleted(
    operator, alice, monkeypatch
):
    racer = make_task(owner=alice, title="racer", status=TaskStatus.PENDING)
    done = make_task(owner=alice, title="done", status=TaskStatus.COMPLETED)
    real_delete = services.task_delete

    def racer_started_meanwhile(*, task_id):
        if str(task_id) == str(racer.pk):
            Task.objects.filter(pk=task_id).update(status=TaskStatus.IN_PROGRESS)
        return real_delete(task_id=task_id)

    monkeypatch.setattr(services, "task_delete", racer_started_meanwhile)

    response = operator.post(
        "/admin/tasks/task/",
        {"action": "delete_selected", "_selected_action": [racer.pk, done.pk], "post": "yes"},
        follow=True,
    )

    assert list(Task.objects.values_list("title", flat=True)) == ["racer"]
    said = [str(message) for message in response.context["messages"]]
    assert said[0] == "1 task(s) deleted."
    assert said[1].startswith("1 task(s) not deleted: a running task is deleted once")
    assert "racer (in_progress)" in said[1]
    assert not any("Successfully deleted" in message for message in said)
    logged = LogEntry.objects.filter(action_flag=DELETION).values_list("object_id", flat=True)
    assert list(logged) == [str(done.pk)]


def test_the_service_refuses_a_running_task_and_deletes_a_missing_one_as_a_no_op(alice):
    running = make_task(owner=alice, title="busy", status=TaskStatus.IN_PROGRESS)

    with pytest.raises(ConflictError, match="cancel it"):
        services.task_delete(task_id=running.pk)
    assert Task.objects.filter(pk=running.pk).exists()

    gone = make_task(owner=alice, title="gone")
    assert services.task_delete(task_id=gone.pk) is True
    events = Event.objects.filter(type="task.deleted").count()
    assert services.task_delete(task_id=gone.pk) is False
    assert Event.objects.filter(type="task.deleted").count() == events  # told once


def test_a_queued_tasks_run_message_finds_nothing_to_run_after_a_delete(alice):
    task = make_task(owner=alice, title="queued", status=TaskStatus.QUEUED)

    services.task_delete(task_id=task.pk)

    assert services.task_run(task_id=task.pk, worker="w1") is None


def test_an_ownerless_legacy_task_is_deleted_without_an_event():
    task = make_task(owner=None, title="legacy")
    before = Event.objects.count()

    services.task_delete(task_id=task.pk)

    assert not Task.objects.filter(pk=task.pk).exists()
    assert Event.objects.count() == before


def test_the_admin_history_records_a_delete(operator, alice):
    task = make_task(owner=alice, title="logged")

    operator.post(f"/admin/tasks/task/{task.pk}/delete/", {"post": "yes"})

    assert LogEntry.objects.filter(object_id=str(task.pk), action_flag=DELETION).exists()


def test_the_admin_history_records_each_task_the_delete_action_deleted(operator, alice):
    tasks = [make_task(owner=alice, title=f"old {i}", status=TaskStatus.FAILED) for i in range(2)]

    operator.post(
        "/admin/tasks/task/",
        {"action": "delete_selected", "_selected_action": [t.pk for t in tasks], "post": "yes"},
    )

    logged = LogEntry.objects.filter(action_flag=DELETION).values_list("object_id", flat=True)
    assert sorted(logged) == sorted(str(t.pk) for t in tasks)
