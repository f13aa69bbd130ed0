"""The Django admin as an operator uses it."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.admin.models import LogEntry
from rest_framework.test import APIClient

from notifications.models import Event, Notification
from taskhub.exceptions import ConflictError
from tasks import services
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def row_cells(page: str, title: str) -> dict[str, str]:
    """The change list's row for the task titled `title`: {column: text shown}. The filter
    sidebar names every status and kind too, so only a row's own cells prove anything."""
    rows = [row for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S) if f">{title}<" in row]
    assert len(rows) == 1, f"expected one row for {title!r}, found {len(rows)}"
    return {
        name: re.sub(r"<[^>]+>", "", text).strip()
        for name, text in re.findall(
            r'<t[dh] class="field-([\w-]+)[^"]*"[^>]*>(.*?)</t[dh]>', rows[0], re.S
        )
    }


def test_the_task_list_shows_status_kind_owner_and_progress(operator, alice, bob):
    make_task(owner=alice, title="Resize photos", kind="echo", status=TaskStatus.IN_PROGRESS,
              progress=40)  # fmt: skip
    make_task(owner=bob, title="Other work", status=TaskStatus.PENDING)

    page = operator.get("/admin/tasks/task/").content.decode()

    cells = row_cells(page, "Resize photos")
    assert (cells["title"], cells["status"], cells["kind"]) == (
        "Resize photos",
        "In progress",
        "echo",
    )
    assert (cells["owner"], cells["progress"]) == ("alice", "40")
    assert row_cells(page, "Other work")["status"] == "Pending"


def test_the_status_filter_lists_only_that_status(operator, alice):
    make_task(owner=alice, title="Resize photos", status=TaskStatus.IN_PROGRESS)
    make_task(owner=alice, title="Send invoices", status=TaskStatus.PENDING)

    page = operator.get("/admin/tasks/task/?status__exact=in_progress").content.decode()

    assert row_cells(page, "Resize photos")["status"] == "In progress"
    assert ">Send invoices<" not in page


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


def change_form(task: Task, **edits) -> dict:
    """The change form as the admin renders it for `task`, with `edits` typed in."""
    form = {
        "title": task.title,
        "description": task.description,
        "kind": task.kind,
        "params": json.dumps(task.params),
        "timeout": task.timeout,
        "run_at_0": "",
        "run_at_1": "",
    }
    form.update(edits)
    return form


def test_editing_a_finished_tasks_title_is_as_visible_as_any_change(
    operator, alice, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, title="Old title", status=TaskStatus.COMPLETED)
    api = APIClient()
    api.force_authenticate(alice)
    assert api.get(f"/api/tasks/{task.pk}/").json()["title"] == "Old title"  # now cached
    inbox_before = Notification.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(
            f"/admin/tasks/task/{task.pk}/change/", change_form(task, title="New title")
        )

    assert response.status_code == 302, response.content.decode()[-3000:]
    assert api.get(f"/api/tasks/{task.pk}/").json()["title"] == "New title"
    event = Event.objects.filter(task_id=task.pk).latest("seq")
    assert event.data["title"] == "New title"
    assert event.data["status"] == event.data["previous_status"] == "completed"
    assert Notification.objects.count() == inbox_before  # nothing finished again


def test_how_a_task_runs_is_editable_only_while_pending(operator, alice):
    pending = make_task(owner=alice, title="waits", kind="echo")
    running = make_task(owner=alice, title="runs", kind="echo", status=TaskStatus.IN_PROGRESS)

    pending_page = operator.get(f"/admin/tasks/task/{pending.pk}/change/").content.decode()
    running_page = operator.get(f"/admin/tasks/task/{running.pk}/change/").content.decode()
    edited = operator.post(
        f"/admin/tasks/task/{pending.pk}/change/",
        change_form(pending, params=json.dumps({"n": 2}), timeout=90),
    )

    assert 'name="params"' in pending_page
    assert 'name="params"' not in running_page
    assert 'name="title"' in running_page
    assert 'name="owner"' not in running_page
    assert edited.status_code == 302, edited.content.decode()[-3000:]
    pending.refresh_from_db()
    assert (pending.params, pending.timeout) == ({"n": 2}, 90)


def test_an_edit_the_service_refuses_shows_its_message_and_changes_nothing(operator, alice):
    task = make_task(owner=alice, title="waits", kind="echo")

    response = operator.post(
        f"/admin/tasks/task/{task.pk}/change/", change_form(task, kind="no-such-kind")
    )

    assert response.status_code == 200
    assert "Unknown kind &#x27;no-such-kind&#x27;" in response.content.decode()
    task.refresh_from_db()
    assert task.kind == "echo"


def test_the_service_refuses_run_fields_of_a_task_that_left_pending(alice):
    task = make_task(owner=alice, title="runs", status=TaskStatus.QUEUED)

    with pytest.raises(ConflictError, match="only while pending"):
        services.task_update_details(task_id=task.pk, params={"x": 1})

    task.refresh_from_db()
    assert task.params == {}


def test_an_edit_refused_because_the_task_left_pending_meanwhile_is_an_error_not_a_success(
    operator, alice, monkeypatch
):
    task = make_task(owner=alice, title="waits", kind="echo")
    update_details = services.task_update_details

    def dispatched_meanwhile(**fields):
        # The dispatcher claims the task after the form was validated, before the save.
        Task.objects.filter(pk=task.pk).update(status=TaskStatus.QUEUED)
        return update_details(**fields)

    monkeypatch.setattr(services, "task_update_details", dispatched_meanwhile)

    response = operator.post(
        f"/admin/tasks/task/{task.pk}/change/",
        change_form(task, title="New title", timeout=task.timeout + 60),
        follow=True,
    )

    page = response.content.decode()
    assert response.redirect_chain == [(f"/admin/tasks/task/{task.pk}/change/", 302)]
    assert "Task is queued; timeout can change only while pending." in page
    assert 'class="error"' in page
    assert "was changed successfully" not in page
    task.refresh_from_db()
    assert (task.title, task.status) == ("waits", TaskStatus.QUEUED)
    assert not LogEntry.objects.filter(object_id=str(task.pk)).exists()
