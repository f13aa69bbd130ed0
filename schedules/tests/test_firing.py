"""Firing: each due time of a schedule creates exactly one task, from the dispatcher's tick."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from schedules import services
from schedules.models import Schedule, ScheduleOccurrence
from schedules.tests.factories import make_schedule
from tasks import queue
from tasks import tasks as celery_tasks
from tasks.models import Task, TaskStatus


@pytest.fixture
def sent(monkeypatch):
    """Run messages the dispatcher sends, kept here instead of going to the broker."""
    orders: list[queue.RunOrder] = []
    monkeypatch.setattr(queue, "send_run_messages", lambda batch: orders.extend(batch))
    monkeypatch.setattr(queue, "send_dispatch", lambda **kw: None)
    return orders


NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)


@pytest.mark.django_db
def test_a_due_schedule_creates_one_task_from_its_template(alice, sent):
    schedule = make_schedule(
        owner=alice,
        title="Count words",
        kind="wordcount",
        description="the cat",
        params={"x": 1},
        timeout=30,
        every_seconds=60,
        due_at=NOW - timedelta(seconds=10),
    )

    assert services.schedules_fire_due(now=NOW) == 1

    task = Task.objects.get(owner=alice)
    assert (task.title, task.kind, task.description, task.params, task.timeout) == (
        "Count words",
        "wordcount",
        "the cat",
        {"x": 1},
        30,
    )
    occurrence = ScheduleOccurrence.objects.get(schedule=schedule)
    assert (occurrence.due_at, occurrence.task_id) == (NOW - timedelta(seconds=10), task.pk)
    schedule.refresh_from_db()
    assert schedule.next_run_at == NOW + timedelta(seconds=50)
    assert schedule.last_run_at == NOW - timedelta(seconds=10)


@pytest.mark.django_db
def test_firing_again_at_the_same_moment_creates_nothing_more(alice, sent):
    make_schedule(owner=alice, every_seconds=60, due_at=NOW)

    assert services.schedules_fire_due(now=NOW) == 1
    assert services.schedules_fire_due(now=NOW) == 0
    assert services.schedules_fire_due(now=NOW + timedelta(seconds=59)) == 0
    assert Task.objects.count() == 1

    assert services.schedules_fire_due(now=NOW + timedelta(seconds=60)) == 1
    assert Task.objects.count() == 2


@pytest.mark.django_db
def test_a_schedule_not_yet_due_fires_nothing(alice, sent):
    make_schedule(owner=alice, due_at=NOW + timedelta(seconds=1))
    assert services.schedules_fire_due(now=NOW) == 0
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_a_disabled_schedule_fires_nothing(alice, sent):
    schedule = make_schedule(owner=alice, due_at=NOW - timedelta(hours=1))
    services.schedule_update(schedule=schedule, enabled=False)

    assert services.schedules_fire_due(now=NOW) == 0
    assert Task.objects.count() == 0 and ScheduleOccurrence.objects.count() == 0


@pytest.mark.django_db
def test_a_deactivated_users_schedule_fires_nothing(alice, sent):
    make_schedule(owner=alice, due_at=NOW - timedelta(minutes=1))
    alice.is_active = False
    alice.save()

    assert services.schedules_fire_due(now=NOW) == 0
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_occurrences_missed_while_everything_was_down_run_once(alice, sent):
    # Due every minute; the dispatcher comes back after three hours away.
    cron = make_schedule(owner=alice, cron="* * * * *", due_at=datetime(2026, 6, 1, 9, tzinfo=UTC))
    interval = make_schedule(owner=alice, every_seconds=60, due_at=NOW - timedelta(hours=3))

    assert services.schedules_fire_due(now=NOW) == 2

    assert Task.objects.count() == 2
    # The one occurrence is the latest due time, and the rhythm goes on from now.
    assert ScheduleOccurrence.objects.get(schedule=cron).due_at == datetime(
        2026, 6, 1, 12, 0, tzinfo=UTC
    )
    cron.refresh_from_db()
    assert cron.next_run_at == datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    interval.refresh_from_db()
    assert interval.next_run_at == NOW + timedelta(seconds=60)
    assert services.schedules_fire_due(now=NOW) == 0


@pytest.mark.django_db
def test_a_due_time_already_fired_is_never_fired_again(alice, sent):
    """As after a restart that finds next_run_at behind a due time it already recorded (a
    clock set back, an edit): the unique (schedule, due_at) keeps it to one task."""
    schedule = make_schedule(owner=alice, every_seconds=60, due_at=NOW)
    services.schedules_fire_due(now=NOW)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=NOW)

    assert services.schedules_fire_due(now=NOW) == 0

    assert Task.objects.count() == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == NOW + timedelta(seconds=60)


@pytest.mark.django_db
def test_a_template_no_longer_valid_records_why_and_keeps_the_rhythm(alice, sent, settings):
    schedule = make_schedule(owner=alice, kind="echo", due_at=NOW)
    settings.TASKHUB_TASK_MAX_TIMEOUT = 10  # lowered since; the template had the default

    assert services.schedules_fire_due(now=NOW) == 1

    occurrence = ScheduleOccurrence.objects.get(schedule=schedule)
    assert occurrence.task is None
    assert "timeout" in occurrence.error
    schedule.refresh_from_db()
    assert schedule.next_run_at == NOW + timedelta(seconds=60)


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_tick_fires_due_schedules_and_queues_their_tasks(alice, sent):
    make_schedule(owner=alice, every_seconds=60, due_at=timezone.now() - timedelta(seconds=1))

    celery_tasks.dispatch_pending_tasks()  # the beat entry's task, as the worker runs it

    task = Task.objects.get(owner=alice)
    assert task.status == TaskStatus.QUEUED  # created and queued by the same tick
    assert [str(order.task_id) for order in sent] == [str(task.pk)]


@pytest.mark.django_db(transaction=True)
def test_a_failing_hook_does_not_stop_the_dispatch(alice, sent, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "schedules_fire_due", broken)
    from tasks import extensions

    monkeypatch.setitem(extensions._tick_hooks, "schedules", broken)
    pending = Task.objects.create(owner=alice, title="waiting", timeout=10)

    celery_tasks.dispatch_pending_tasks()

    pending.refresh_from_db()
    assert pending.status == TaskStatus.QUEUED


@pytest.mark.django_db(transaction=True)
def test_a_schedule_locked_by_another_dispatcher_is_skipped_not_waited_for(alice, sent):
    schedule = make_schedule(owner=alice, every_seconds=60, due_at=NOW)
    locked, release = threading.Event(), threading.Event()

    def other_dispatcher() -> None:
        try:
            with transaction.atomic():
                Schedule.objects.select_for_update().get(pk=schedule.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_dispatcher)
    thread.start()
    try:
        assert locked.wait(10)
        assert services.schedules_fire_due(now=NOW) == 0  # returns at once: SKIP LOCKED
    finally:
        release.set()
        thread.join(10)
    assert services.schedules_fire_due(now=NOW) == 1


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_firing_at_once_never_double_an_occurrence(alice, bob, sent):
    due = NOW - timedelta(minutes=5)
    schedules = [
        make_schedule(owner=owner, every_seconds=60, title=f"s{n}", due_at=due)
        for n in range(20)
        for owner in (alice, bob)
    ]
    start = threading.Barrier(2)
    fired: list[int] = []
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            start.wait(10)
            for _ in range(5):
                fired.append(services.schedules_fire_due(now=NOW, limit=7))
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sum(fired) == len(schedules)
    assert Task.objects.count() == len(schedules)
    assert ScheduleOccurrence.objects.count() == len(schedules)
    for schedule in schedules:
        assert ScheduleOccurrence.objects.filter(schedule=schedule).count() == 1


@pytest.mark.django_db
def test_a_schedule_that_fails_unexpectedly_fails_alone(alice, bob, sent, monkeypatch):
    """A defect hit by one user's schedule (here a task listener that raises) used to roll
    back the whole tick: every other user's schedule waited for it, for ever."""
    broken = make_schedule(owner=alice, title="trips a defect", due_at=NOW)
    healthy = make_schedule(owner=bob, title="fine", due_at=NOW)
    real_create = services.task_services.task_create

    def create(**values):
        task = real_create(**values)  # its rows are written, then the defect strikes
        if values["title"] == "trips a defect":
            raise RuntimeError("listener blew up")
        return task

    monkeypatch.setattr(services.task_services, "task_create", create)

    assert services.schedules_fire_due(now=NOW) == 2

    assert list(Task.objects.values_list("title", flat=True)) == ["fine"]
    failed = ScheduleOccurrence.objects.get(schedule=broken)
    assert failed.task is None
    assert failed.error == "internal error: RuntimeError: listener blew up"
    assert ScheduleOccurrence.objects.get(schedule=healthy).task.title == "fine"
    for schedule in (broken, healthy):
        schedule.refresh_from_db()
        assert schedule.next_run_at == NOW + timedelta(seconds=60)
