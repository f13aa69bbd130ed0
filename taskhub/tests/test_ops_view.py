"""The operators' view (/admin/operations/, taskhub/ops.py) and its /metrics gauges,
against real workers and the real broker (docs/operations.md, "The operators' view").

The workers are real `celery worker` processes on the test database; the figures are
what inspect and the broker's lists say, read through the view's JSON.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from conftest import status_of, wait_for_status
from devserver import testing
from devserver.testing import node_name, wait_until
from taskhub import ops
from tasks import services
from tasks.models import TaskStatus
from tasks.tests.factories import make_task

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DATA = "/admin/operations/data.json"
LONG = {"seconds": 60, "steps": 60}


@pytest.fixture
def worker(transactional_db, purge_broker):
    """start(node, **options): a real worker; every one started is stopped after."""
    started: list[testing.ManagedProcess] = []
    ops.forget_cached("workers", "queues", "history")

    def start(node: str, **options: Any) -> testing.ManagedProcess:
        process = testing.start_worker(node=node, **options)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()
    ops.forget_cached("workers", "queues", "history")


@pytest.fixture
def staff_member(django_user_model):
    """staff_member(*permissions) -> a Client signed in to the admin as a staff member, not
    a superuser, holding exactly those permissions ("app_label.codename")."""

    def make(*permissions: str) -> Client:
        user = django_user_model.objects.create_user(
            f"staff-{uuid.uuid4().hex[:6]}", password="staff-pass-123", is_staff=True
        )
        for permission in permissions:
            app_label, codename = permission.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        client = Client()
        client.force_login(user)
        return client

    return make


def snapshot(client: Client) -> dict[str, Any]:
    response = client.get(DATA)
    assert response.status_code == 200, response.content[:500]
    return response.json()


def worker_in(client: Client, name: str) -> dict[str, Any] | None:
    for entry in snapshot(client)["workers"] or []:
        if entry["name"] == name:
            return entry
    return None


def metric_value(client: Client, line_start: str) -> float | None:
    body = client.get("/metrics").content.decode()
    match = re.search(rf"^{re.escape(line_start)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


# --- Who may look -------------------------------------------------------------------------


def test_someone_not_staff_gets_neither_the_page_nor_the_data_nor_the_actions(alice):
    task = services.task_create(owner=alice, title="mine", kind="echo")
    signed_in = Client()
    signed_in.force_login(alice)

    for client in (Client(), signed_in):
        for url in ("/admin/operations/", DATA):
            response = client.get(url)
            assert response.status_code == 302
            assert response["Location"].startswith("/admin/login/")
        response = client.post(f"/admin/operations/tasks/{task.pk}/cancel")
        assert response.status_code in (302, 403)

    assert status_of(task) != TaskStatus.CANCELLED


def test_staff_without_permissions_may_look_but_not_cancel_retry_or_drain(staff_member, alice):
    pending = make_task(owner=alice, title="waiting")
    failed = make_task(owner=alice, title="broke", status=TaskStatus.FAILED)
    looker = staff_member()

    assert looker.get(DATA).status_code == 200
    cancel = looker.post(f"/admin/operations/tasks/{pending.pk}/cancel")
    retry = looker.post(f"/admin/operations/tasks/{failed.pk}/retry")
    drain = looker.post("/admin/operations/workers/drain", {"worker": "nobody@nowhere"})

    assert (cancel.status_code, retry.status_code, drain.status_code) == (403, 403, 403)
    assert "tasks.change_task" in cancel.json()["detail"]
    assert "tasks.change_task" in retry.json()["detail"]
    assert "tasks.drain_worker" in drain.json()["detail"]
    assert (status_of(pending), status_of(failed)) == (TaskStatus.PENDING, TaskStatus.FAILED)


def test_the_change_task_permission_cancels_and_retries_but_does_not_drain(staff_member, alice):
    pending = make_task(owner=alice, title="waiting")
    failed = make_task(owner=alice, title="broke", status=TaskStatus.FAILED)
    changer = staff_member("tasks.change_task")

    cancel = changer.post(f"/admin/operations/tasks/{pending.pk}/cancel")
    retry = changer.post(f"/admin/operations/tasks/{failed.pk}/retry")
    drain = changer.post("/admin/operations/workers/drain", {"worker": "nobody@nowhere"})

    assert (cancel.status_code, retry.status_code, drain.status_code) == (200, 200, 403)
    assert (cancel.json()["status"], retry.json()["status"]) == ("cancelled", "pending")
    assert status_of(pending) == TaskStatus.CANCELLED


def test_the_drain_worker_permission_drains_but_does_not_cancel(staff_member, alice, worker):
    pending = make_task(owner=alice, title="waiting")
    drainer = staff_member("tasks.drain_worker")

    # Past the permission: the view looked for the worker (none answers by that name).
    drain = drainer.post("/admin/operations/workers/drain", {"worker": "nobody@nowhere"})
    cancel = drainer.post(f"/admin/operations/tasks/{pending.pk}/cancel")

    assert (drain.status_code, cancel.status_code) == (404, 403)
    assert status_of(pending) == TaskStatus.PENDING


def test_the_admin_index_links_the_operators_view(operator):
    response = operator.get("/admin/")

    assert b'href="/admin/operations/"' in response.content


def test_an_action_without_the_csrf_token_is_refused(operator, alice):
    task = services.task_create(owner=alice, title="kept", kind="echo")
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = operator.cookies

    response = strict.post(f"/admin/operations/tasks/{task.pk}/cancel")

    assert response.status_code == 403
    assert status_of(task) != TaskStatus.CANCELLED


# --- Workers ------------------------------------------------------------------------------


def test_a_running_worker_shows_its_pid_concurrency_and_active_task_and_cancel_stops_it(
    operator, alice, worker
):
    name = node_name("ops")
    process = worker(name, concurrency=2)
    task = services.task_create(owner=alice, title="Nightly backup", params=LONG)
    wait_for_status(task, TaskStatus.IN_PROGRESS)

    def running_it() -> dict[str, Any] | None:
        entry = worker_in(operator, name)
        return entry if entry and entry["active"] else None

    entry = wait_until(running_it, timeout=30, interval=0.5, message="the worker's active task")
    assert entry["pid"] == process.proc.pid
    assert entry["concurrency"] == 2
    assert entry["queues"] == ["celery", "dispatch"]
    assert entry["heartbeat_age"] >= 0
    [run] = entry["active"]
    assert run["task_id"] == str(task.pk)
    assert run["celery_id"] == f"{task.pk}:1"
    assert (run["title"], run["owner"], run["kind"], run["attempt"]) == (
        "Nightly backup",
        "alice",
        "simulate",
        1,
    )

    response = operator.post(f"/admin/operations/tasks/{task.pk}/cancel")

    assert response.status_code == 200
    assert response.json()["detail"] == "cancel requested; it stops at its next checkpoint"
    wait_for_status(task, TaskStatus.CANCELLED, timeout=15)
    # Seen at once: the action dropped the cached answer.
    wait_until(
        lambda: worker_in(operator, name)["active"] == [],
        timeout=15,
        interval=0.5,
        message="the cancelled task to leave the worker's active list",
    )


def test_retry_from_the_view_runs_a_cancelled_task_again_and_a_second_cancel_is_a_conflict(
    operator, alice, worker
):
    name = node_name("ops")
    worker(name, concurrency=1)
    task = services.task_create(owner=alice, title="again", kind="echo")
    wait_for_status(task, TaskStatus.COMPLETED)
    ops.forget_cached("history")
    assert worker_in(operator, name)["last_hour"] == {"completed": 1, "failed": 0, "cancelled": 0}

    refused = operator.post(f"/admin/operations/tasks/{task.pk}/cancel")
    assert refused.status_code == 409
    assert "already completed" in refused.json()["detail"]

    refused = operator.post(f"/admin/operations/tasks/{task.pk}/retry")
    assert refused.status_code == 409

    long = services.task_create(owner=alice, title="to retry", params=LONG)
    wait_for_status(long, TaskStatus.IN_PROGRESS)
    operator.post(f"/admin/operations/tasks/{long.pk}/cancel")
    wait_for_status(long, TaskStatus.CANCELLED, timeout=15)
    assert str(long.pk) in [t["task_id"] for t in snapshot(operator)["recently_unsuccessful"]]

    response = operator.post(f"/admin/operations/tasks/{long.pk}/retry")

    assert response.status_code == 200
    assert response.json()["status"] == TaskStatus.PENDING
    wait_for_status(long, TaskStatus.IN_PROGRESS)
    long.refresh_from_db()
    assert long.attempts == 2
    operator.post(f"/admin/operations/tasks/{long.pk}/cancel")
    wait_for_status(long, TaskStatus.CANCELLED, timeout=15)


def test_a_drained_worker_consumes_nothing_its_queue_fills_and_metrics_say_so(
    operator, alice, worker
):
    dispatcher = node_name("dispatch")
    worker(dispatcher, queues="dispatch", concurrency=1)
    name = node_name("ops")
    worker(name, queues="celery", concurrency=1)
    wait_until(lambda: worker_in(operator, name), timeout=30, interval=0.5, message=name)

    response = operator.post("/admin/operations/workers/drain", {"worker": name})

    assert response.status_code == 200
    assert response.json()["queues"] == ["celery"]
    assert wait_until(lambda: worker_in(operator, name)["queues"] == [], timeout=10)

    tasks = [services.task_create(owner=alice, title=f"t{i}", kind="echo") for i in range(3)]
    for task in tasks:
        wait_for_status(task, TaskStatus.QUEUED)

    wait_until(
        lambda: snapshot(operator)["queues"] == {"celery": 3, "dispatch": 0},
        timeout=15,
        interval=0.5,
        message="three messages waiting in the celery queue",
    )
    wait_until(
        lambda: metric_value(operator, 'taskhub_queue_depth{queue="celery"}') == 3.0,
        timeout=15,
        interval=0.5,
        message="taskhub_queue_depth 3",
    )
    assert metric_value(operator, 'taskhub_queue_depth{queue="dispatch"}') == 0.0
    assert metric_value(operator, "taskhub_workers_online") == 2.0
    assert [status_of(task) for task in tasks] == [TaskStatus.QUEUED] * 3


def test_an_unknown_worker_cannot_be_drained(operator, worker):
    response = operator.post("/admin/operations/workers/drain", {"worker": "nobody@nowhere"})

    assert response.status_code == 404


def test_metrics_count_no_worker_when_none_answers(operator, worker):
    ops.forget_cached("workers")

    assert metric_value(operator, "taskhub_workers_online") == 0.0
    assert snapshot(operator)["workers"] == []
