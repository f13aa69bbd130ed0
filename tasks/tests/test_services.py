"""Create, cancel, retry and progress through tasks.services."""

from __future__ import annotations

import contextlib

import pytest
from django.core.exceptions import ValidationError
from django.db import DataError, transaction

from notifications import protocol, push
from notifications import services as notification_services
from notifications.models import Event
from taskhub.exceptions import ConflictError
from tasks import cache, services
from tasks.models import StopRequest, Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def test_create_inserts_a_pending_task_with_the_default_timeout(alice, settings):
    task = services.task_create(owner=alice, title="Resize photos")

    task.refresh_from_db()
    assert task.status == TaskStatus.PENDING
    assert task.kind == "simulate"
    assert task.timeout == settings.TASKHUB_TASK_DEFAULT_TIMEOUT == 240
    assert task.attempts == 1


def test_create_writes_the_created_event_in_the_same_statement(alice):
    task = services.task_create(owner=alice, title="Resize photos")

    event = Event.objects.get(task_id=task.pk)
    assert event.type == "task.updated"
    assert event.data["status"] == "pending"
    assert event.data["previous_status"] is None
    assert event.seq == 1
    # The event tells the row as written: the same timestamp, not one taken a moment apart.
    task.refresh_from_db()
    assert event.data["updated_at"] == protocol.format_ts(task.updated_at)


@pytest.mark.django_db(transaction=True)  # no test transaction around it: as in production
def test_a_create_whose_row_is_refused_leaves_no_event_and_takes_no_number(alice):
    services.task_create(owner=alice, title="first")

    # The title column holds 200 characters: PostgreSQL refuses the row, and the event
    # written in the same statement goes with it.
    with pytest.raises(DataError):
        services.task_create(owner=alice, title="x" * 201)

    assert list(Task.objects.values_list("title", flat=True)) == ["first"]
    assert list(Event.objects.filter(user=alice).values_list("seq", flat=True)) == [1]
    assert services.task_create(owner=alice, title="second").pk
    assert list(Event.objects.filter(user=alice).values_list("seq", flat=True)) == [1, 2]


@pytest.mark.django_db(transaction=True)
def test_a_create_whose_event_is_refused_leaves_no_task(alice, monkeypatch):
    # The event's half of the statement fails (a division by zero where the event goes):
    # the task's half, in the same statement, goes with it.
    monkeypatch.setattr(
        notification_services,
        "_INSERT_EVENT",
        "SELECT id, seq FROM notifications_publish_event(%s, %s, %s::jsonb, %s::uuid, %s) "
        "WHERE 1 / 0 = 1",
    )

    with pytest.raises(DataError):
        services.task_create(owner=alice, title="lost together")

    assert not Task.objects.exists()
    assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True)  # on_commit as in production
@pytest.mark.parametrize("in_a_transaction", [False, True], ids=["alone", "in a transaction"])
def test_a_creates_cache_versions_are_bumped_after_its_row_and_before_its_push(
    alice, monkeypatch, in_a_transaction
):
    # A client that reads its task list when the event arrives must see the new task.
    calls: list[str] = []
    bump = cache._bump
    monkeypatch.setattr(cache, "_bump", lambda *keys: calls.append("bump") or bump(*keys))
    monkeypatch.setattr(push, "group_send_now", lambda messages, what: calls.append("push"))
    monkeypatch.setattr(services, "nudge_dispatcher", lambda: calls.append("nudge"))

    with transaction.atomic() if in_a_transaction else contextlib.nullcontext():
        task = services.task_create(owner=alice, title="listed")
        assert calls == ([] if in_a_transaction else ["bump", "push", "nudge"])
        assert Task.objects.filter(pk=task.pk).exists()

    assert calls == ["bump", "push", "nudge"]


def test_create_nudges_the_dispatcher_only_after_commit(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        services.task_create(owner=alice, title="Resize photos")

    assert services.nudge_dispatcher in callbacks


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"kind": "no-such-kind"}, "kind"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 10**7}, "timeout"),
        ({"params": ["not", "an", "object"]}, "params"),
        ({"params": {"blob": "x" * 100_000}}, "params"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(alice, fields, bad_field):
    with pytest.raises(ValidationError) as excinfo:
        services.task_create(owner=alice, title="t", **fields)

    assert bad_field in excinfo.value.message_dict
    assert not Task.objects.exists()


def test_build_fills_in_the_defaults_a_create_writes_and_writes_nothing(
    alice, django_assert_num_queries
):
    with django_assert_num_queries(0):
        task = services.task_build(owner=alice, title="Resize photos", kind="flaky")

    assert task._state.adding
    assert not Task.objects.exists()
    assert (task.status, task.timeout, task.attempts) == (TaskStatus.PENDING, 240, 1)
    # The kind's own retry policy (flaky declares 3 attempts, 2 s apart), not the model's
    # defaults.
    assert (task.max_attempts, task.retry_backoff) == (3, 2)


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [({"kind": "no-such-kind"}, "kind"), ({"callback_url": "ftp://example.com/"}, "callback_url")],
)
def test_build_refuses_what_a_create_refuses(alice, fields, bad_field):
    with pytest.raises(ValidationError) as excinfo:
        services.task_build(owner=alice, title="t", **fields)

    assert bad_field in excinfo.value.message_dict


def test_anonymous_task_writes_no_event():
    task = services.task_create(owner=None, title="legacy")

    assert not Event.objects.filter(task_id=task.pk).exists()


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.QUEUED])
def test_cancel_of_a_task_not_started_is_immediate(alice, status):
    task = make_task(owner=alice, status=status)

    cancelled = services.task_cancel(task=task)

    assert cancelled.status == TaskStatus.CANCELLED
    assert cancelled.finished_at is not None


def test_cancel_of_a_running_task_asks_the_processor_to_stop(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)

    result = services.task_cancel(task=task)

    assert result.status == TaskStatus.IN_PROGRESS
    assert result.stop_requested == StopRequest.CANCEL


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_cancel_of_a_finished_task_is_a_conflict(alice, status):
    task = make_task(owner=alice, status=status)

    with pytest.raises(ConflictError):
        services.task_cancel(task=task)

    task.refresh_from_db()
    assert task.status == status


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_retry_returns_a_finished_task_to_pending_with_one_more_attempt(alice, status):
    task = make_task(owner=alice, status=status, error="boom", progress=40)

    retried = services.task_retry(task=task)

    retried.refresh_from_db()
    assert retried.status == TaskStatus.PENDING
    assert retried.attempts == 2
    assert retried.error == ""
    assert retried.progress == 0


@pytest.mark.parametrize(
    "status", [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED]
)
def test_retry_of_a_task_that_did_not_fail_is_a_conflict(alice, status):
    task = make_task(owner=alice, status=status)

    with pytest.raises(ConflictError):
        services.task_retry(task=task)


def test_progress_is_stored_only_while_running(alice):
    running = make_task(owner=alice, status=TaskStatus.IN_PROGRESS)
    done = make_task(owner=alice, status=TaskStatus.COMPLETED, progress=100)

    services.task_report_progress(task=running, progress=42)
    services.task_report_progress(task=done, progress=10)

    running.refresh_from_db()
    done.refresh_from_db()
    assert running.progress == 42
    assert done.progress == 100


def test_events_of_one_user_are_numbered_without_gaps(alice, bob):
    for title in ("one", "two", "three"):
        services.task_create(owner=alice, title=title)
    services.task_create(owner=bob, title="bob's")

    assert list(Event.objects.filter(user=alice).values_list("seq", flat=True)) == [1, 2, 3]
    assert list(Event.objects.filter(user=bob).values_list("seq", flat=True)) == [1]
