"""The dispatcher: the only code that moves pending -> queued and sends run messages."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import push
from notifications.models import Event
from tasks import nudge, queue, services
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task


@pytest.fixture
def sent(monkeypatch):
    """Run messages the dispatcher sends, kept instead of going to the broker so that no
    worker of another test picks them up. Everything up to the send is real."""
    orders: list[queue.RunOrder] = []
    monkeypatch.setattr(queue, "send_run_messages", lambda batch: orders.extend(batch))
    return orders


@pytest.fixture
def dispatch_requests(monkeypatch):
    """Dispatch messages the nudges send, counted here instead of going to the broker."""
    requests: list[dict] = []
    monkeypatch.setattr(queue, "send_dispatch", lambda **kw: requests.append(kw))
    nudge.clear_nudges()
    yield requests
    nudge.clear_nudges()


@pytest.mark.django_db
def test_a_burst_of_creates_sends_one_dispatch_which_queues_them_all(
    alice, sent, dispatch_requests, django_capture_on_commit_callbacks
):
    for number in range(20):
        with django_capture_on_commit_callbacks(execute=True):
            services.task_create(owner=alice, title=f"task {number}")

    assert len(dispatch_requests) == 1
    services.dispatch_pending_tasks()
    assert Task.objects.filter(status=TaskStatus.QUEUED).count() == 20


@pytest.mark.django_db
def test_a_create_after_the_dispatcher_looked_nudges_it_again(
    alice, sent, dispatch_requests, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.task_create(owner=alice, title="first")
    services.dispatch_pending_tasks()

    with django_capture_on_commit_callbacks(execute=True):
        late = services.task_create(owner=alice, title="second")

    assert len(dispatch_requests) == 2
    services.dispatch_pending_tasks()
    late.refresh_from_db()
    assert late.status == TaskStatus.QUEUED


@pytest.mark.django_db
def test_due_pending_tasks_are_queued_and_sent_after_commit(
    alice, sent, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice)

    with django_capture_on_commit_callbacks(execute=True):
        orders = services.dispatch_pending_tasks()

    task.refresh_from_db()
    assert task.status == TaskStatus.QUEUED
    assert task.queued_at is not None
    assert [order.task_id for order in orders] == [str(task.pk)]
    assert [order.task_id for order in sent] == [str(task.pk)]
    assert Event.objects.get(task_id=task.pk).data["status"] == "queued"


@pytest.mark.django_db
def test_nothing_is_sent_when_the_claim_rolls_back(alice, sent, django_capture_on_commit_callbacks):
    make_task(owner=alice)

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.dispatch_pending_tasks()
        raise RuntimeError("the claiming transaction fails")

    assert sent == []
    assert Task.objects.get().status == TaskStatus.PENDING


@pytest.mark.django_db
def test_a_task_scheduled_for_later_waits_for_its_time(alice, sent):
    later = make_task(owner=alice, run_at=timezone.now() + timedelta(hours=1))
    due = make_task(owner=alice, run_at=timezone.now() - timedelta(seconds=1))

    orders = services.dispatch_pending_tasks()

    assert [order.task_id for order in orders] == [str(due.pk)]
    later.refresh_from_db()
    assert later.status == TaskStatus.PENDING


@pytest.mark.django_db
def _created(task: Task, at) -> Task:
    Task.objects.filter(pk=task.pk).update(created_at=at)
    return task


def test_the_earliest_due_are_claimed_first_whether_new_or_retried(alice, sent):
    now = timezone.now()
    new = _created(make_task(owner=alice), now - timedelta(seconds=10))
    # Created long ago, due 5 s ago: its due time, not its creation, places it.
    retry = _created(
        make_task(owner=alice, run_at=now - timedelta(seconds=5)), now - timedelta(minutes=5)
    )
    newer = _created(make_task(owner=alice), now - timedelta(seconds=1))

    first = services.dispatch_pending_tasks(limit=2)
    second = services.dispatch_pending_tasks(limit=2)

    assert {order.task_id for order in first} == {str(new.pk), str(retry.pk)}
    assert [order.task_id for order in second] == [str(newer.pk)]


def test_a_run_at_in_the_past_does_not_jump_the_queue(alice, bob, sent):
    waiting = _created(make_task(owner=alice), timezone.now() - timedelta(seconds=10))
    make_task(owner=bob, run_at=timezone.now() - timedelta(days=365 * 50))

    assert [o.task_id for o in services.dispatch_pending_tasks(limit=1)] == [str(waiting.pk)]


def _rows_read_by_claim_scans(statements: list[str]) -> dict[str, int]:
    """Rows each index scan of the claim's SELECT ... FOR UPDATE statements read, by index."""
    read: dict[str, int] = {}

    def walk(node: dict) -> None:
        if "Index Name" in node:
            read[node["Index Name"]] = read.get(node["Index Name"], 0) + (
                node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            )
        for child in node.get("Plans", []):
            walk(child)

    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
            walk(cursor.fetchone()[0][0]["Plan"])
    return read


@pytest.mark.django_db
def test_a_claim_reads_past_no_task_waiting_for_a_later_run_at(alice, sent):
    """A thousand retries in backoff used to be walked by every claim (one index on
    created_at, run_at filtered row by row); each half of the claim now reads only what
    it takes."""
    later = timezone.now() + timedelta(hours=1)
    Task.objects.bulk_create(
        Task(owner=alice, title=f"retry {n}", timeout=60, run_at=later) for n in range(1000)
    )
    due = make_task(owner=alice)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")  # the planner sees the table as it is

    with CaptureQueriesContext(connection) as queries:
        orders = services.dispatch_pending_tasks(limit=10)

    assert [order.task_id for order in orders] == [str(due.pk)]
    claims = [
        q["sql"]
        for q in queries.captured_queries
        if "FOR UPDATE" in q["sql"] and "pending" in q["sql"]
    ]
    assert len(claims) == 2
    assert _rows_read_by_claim_scans(claims) == {
        "task_pending_now_idx": 0,  # the due task is queued by now: nothing left to read
        "task_pending_later_idx": 0,
    }


@pytest.mark.django_db
def test_a_queued_task_whose_message_was_lost_is_sent_again(alice, sent, settings):
    lost_at = timezone.now() - timedelta(seconds=settings.TASKHUB_QUEUED_RESEND_AFTER + 5)
    stale = make_task(owner=alice, status=TaskStatus.QUEUED, queued_at=lost_at)
    fresh = make_task(owner=alice, status=TaskStatus.QUEUED, queued_at=timezone.now())
    fresh_since = fresh.queued_at

    orders = services.dispatch_pending_tasks()

    assert [order.task_id for order in orders] == [str(stale.pk)]
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == TaskStatus.QUEUED
    # Its clock restarts with the resend, so it is not sent again on the next pass.
    assert stale.queued_at > fresh_since > lost_at
    assert fresh.queued_at == fresh_since
    assert services.dispatch_pending_tasks() == []


@pytest.mark.django_db(transaction=True)
def test_a_row_locked_by_another_dispatcher_is_skipped_not_waited_for(alice, sent):
    locked = make_task(owner=alice)
    free = make_task(owner=alice)
    holding = threading.Event()
    release = threading.Event()

    def other_dispatcher_holds_a_row() -> None:
        with transaction.atomic():
            list(Task.objects.select_for_update().filter(pk=locked.pk))
            holding.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=other_dispatcher_holds_a_row)
    thread.start()
    try:
        assert holding.wait(10)
        orders = services.dispatch_pending_tasks()
    finally:
        release.set()
        thread.join()

    assert [order.task_id for order in orders] == [str(free.pk)]


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_enqueue_each_task_exactly_once(alice, bob, sent):
    tasks = [make_task(owner=alice if n % 2 else bob, title=f"t{n}") for n in range(300)]
    # Lock-step rounds: in each, both dispatchers claim at the same moment, and the next
    # round starts when both are done. Without it one thread could drain the table before
    # the other was scheduled, and "exactly once" would be tested on one dispatcher.
    rounds = threading.Barrier(2)
    claimed: list[list[queue.RunOrder]] = [[], []]
    last: list[list[queue.RunOrder]] = [[], []]
    errors: list[BaseException] = []

    def dispatcher(slot: int) -> None:
        try:
            while True:
                rounds.wait(30)  # both start the round together
                last[slot] = services.dispatch_pending_tasks(limit=25)
                claimed[slot].extend(last[slot])
                rounds.wait(30)  # both have claimed: `last` is this round's
                if not (last[0] or last[1]):
                    return
        except BaseException as exc:  # surfaced below
            rounds.abort()  # the other thread must not wait for this one
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatcher, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    all_ids = [order.task_id for order in claimed[0] + claimed[1]]
    assert sorted(all_ids) == sorted(str(task.pk) for task in tasks)
    # In every round with rows left, each took a batch of its own (SKIP LOCKED).
    assert len(claimed[0]) >= 25 and len(claimed[1]) >= 25
    queued_events = Event.objects.filter(type="task.updated", data__status="queued").count()
    assert queued_events == len(tasks)


@pytest.mark.django_db
def test_a_full_batch_runs_the_dispatcher_again_at_once_while_the_workers_keep_up(
    alice, settings, purge_broker, django_capture_on_commit_callbacks
):
    # A burst is let out batch after batch, not one batch per beat tick, until the workers'
    # queue holds two batches; then the tick paces it and the rest waits in PostgreSQL.
    # The broker is real (this test's Redis database); no worker consumes it.
    settings.TASKHUB_DISPATCH_BATCH_SIZE = 3
    for number in range(10):
        make_task(owner=alice, title=f"burst {number}")
    dispatch_queue = settings.CELERY_TASK_ROUTES[queue.DISPATCH_PENDING_TASKS]["queue"]

    with django_capture_on_commit_callbacks(execute=True):
        services.dispatch_pending_tasks()

    assert queue.waiting_messages() == 3  # this batch's run messages
    assert queue.waiting_messages(dispatch_queue) == 1  # and a run of the dispatcher, now

    nudge.clear_nudges()  # as the dispatcher's run does first
    with django_capture_on_commit_callbacks(execute=True):
        services.dispatch_pending_tasks()

    assert queue.waiting_messages() == 6  # two batches wait: the workers are behind
    assert queue.waiting_messages(dispatch_queue) == 1  # so no new run of the dispatcher
    assert Task.objects.filter(status=TaskStatus.PENDING).count() == 4


@pytest.mark.django_db
def test_a_batch_that_is_not_full_leaves_the_dispatcher_to_its_tick(
    alice, settings, purge_broker, django_capture_on_commit_callbacks
):
    settings.TASKHUB_DISPATCH_BATCH_SIZE = 3
    make_task(owner=alice, title="alone")
    dispatch_queue = settings.CELERY_TASK_ROUTES[queue.DISPATCH_PENDING_TASKS]["queue"]

    with django_capture_on_commit_callbacks(execute=True):
        services.dispatch_pending_tasks()

    assert queue.waiting_messages() == 1
    assert queue.waiting_messages(dispatch_queue) == 0


@pytest.mark.django_db
def test_a_run_records_its_tasks_in_a_fixed_number_of_queries_each_owners_events_in_order(
    alice, bob, sent, monkeypatch, django_capture_on_commit_callbacks
):
    pushed: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        push, "group_send_now", lambda messages, what: pushed.extend(messages) or True
    )

    def dispatch(per_owner: int) -> int:
        for number in range(per_owner):
            make_task(owner=alice, title=f"alice {number}")
            make_task(owner=bob, title=f"bob {number}")
        with (
            CaptureQueriesContext(connection) as queries,
            django_capture_on_commit_callbacks(execute=True),
        ):
            services.dispatch_pending_tasks()
        return len(queries)

    # Ten times the tasks, the same queries: one statement for all the events.
    assert dispatch(2) == dispatch(20)

    for owner in (alice, bob):
        events = list(Event.objects.filter(user=owner).order_by("seq"))
        claimed = Task.objects.filter(owner=owner).order_by("created_at")
        assert [event.seq for event in events] == list(range(1, 23))
        assert [event.task_id for event in events] == [task.pk for task in claimed]
        assert {(e.data["status"], e.data["previous_status"]) for e in events} == {
            ("queued", "pending")
        }
        assert [e.data["title"] for e in events] == [t.title for t in claimed]
        # Pushed after commit, in the same order and numbers as stored.
        frames = [message["frame"] for group, message in pushed if group == f"user.{owner.pk}"]
        assert [frame["id"] for frame in frames] == [event.seq for event in events]
        assert [frame["data"] for frame in frames] == [event.data for event in events]
