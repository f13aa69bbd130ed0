"""The retry policy (issue 15 §2, docs/tasks.md "Retries"): max_attempts and retry_backoff
per task, a failed attempt with attempts left back to pending after a jittered exponential
wait, only the final failure terminal, cancel stops retries, manual retry with new params."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.utils import timezone

from conftest import access_token_for
from devserver import testing
from devserver.wsclient import open_network
from notifications.models import Event, Notification
from taskhub.exceptions import ConflictError
from tasks import services
from tasks.models import StopRequest, Task, TaskStatus
from tasks.processors import registry
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db

FAILS = {"seconds": 0, "steps": 1, "fail_at_step": 1}  # simulate: fails at once


def times_out(ctx):
    """What Celery's soft time limit does to a processor that runs past its timeout."""
    raise SoftTimeLimitExceeded()


def declares_a_lot(ctx):
    return {}


declares_a_lot.max_attempts = 50
declares_a_lot.retry_backoff = 10**9


@pytest.fixture
def test_kinds(settings):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "times_out": f"{__name__}.times_out",
        "declares_a_lot": f"{__name__}.declares_a_lot",
    }


def run_attempt(task: Task) -> Task:
    """The dispatcher's and the worker's part of one attempt, now, whatever run_at says."""
    assert services.task_transition(task_id=task.pk, to=TaskStatus.QUEUED) is not None
    services.task_run(task_id=task.pk, worker="w1@test")
    task.refresh_from_db()
    return task


def updates(task: Task) -> list[dict]:
    return [
        event.data
        for event in Event.objects.filter(task_id=task.pk, type="task.updated").order_by("seq")
    ]


# --- The automatic retry -----------------------------------------------------------------


def test_a_failing_task_with_three_attempts_fails_only_after_the_third(alice):
    task = services.task_create(
        owner=alice, title="flaky", params=FAILS, max_attempts=3, retry_backoff=10
    )
    waits = []
    for attempt in (1, 2):
        before = timezone.now()
        run_attempt(task)
        ran_for = (timezone.now() - before).total_seconds()
        assert task.status == TaskStatus.PENDING
        assert task.attempts == attempt + 1
        assert "simulated failure at step 1" in task.error  # the last error, kept
        assert task.finished_at is None and task.started_at is None
        # The wait counts from the failure, somewhere in the run: subtract what the run took
        # on this machine, so a slow CI neither passes a wrong wait nor fails a right one.
        waits.append(((task.run_at - before).total_seconds(), ran_for))
    task = run_attempt(task)

    assert task.status == TaskStatus.FAILED
    assert task.attempts == 3
    # 10 s then 20 s, each within ±20 %: the wait grows.
    (first, ran_first), (second, ran_second) = waits
    assert 8 <= first <= 12 + ran_first and 16 <= second <= 24 + ran_second
    assert [(u["previous_status"], u["status"]) for u in updates(task)] == [
        (None, "pending"),
        ("pending", "queued"), ("queued", "in_progress"), ("in_progress", "pending"),
        ("pending", "queued"), ("queued", "in_progress"), ("in_progress", "pending"),
        ("pending", "queued"), ("queued", "in_progress"), ("in_progress", "failed"),
    ]  # fmt: skip
    retries = [u["retry"] for u in updates(task) if "retry" in u]
    assert [(r["attempt"], r["of"]) for r in retries] == [(2, 3), (3, 3)]
    assert all("simulated failure at step 1" in r["error"] for r in retries)
    assert 8 <= retries[0]["in_seconds"] <= 12 and 16 <= retries[1]["in_seconds"] <= 24
    assert all(u["max_attempts"] == 3 for u in updates(task))
    # Only the final failure is terminal: one inbox entry, for it.
    assert list(Notification.objects.filter(task_id=task.pk).values_list("title", flat=True)) == [
        "Task “flaky” failed"
    ]


def test_a_task_with_one_attempt_fails_at_once_as_before(alice):
    task = services.task_create(owner=alice, title="once", params=FAILS)

    run_attempt(task)

    assert task.status == TaskStatus.FAILED
    assert task.max_attempts == 1
    assert all("retry" not in u for u in updates(task))


def test_the_dispatcher_leaves_a_retry_alone_until_its_run_at(alice):
    task = services.task_create(
        owner=alice, title="later", params=FAILS, max_attempts=2, retry_backoff=60
    )
    run_attempt(task)
    assert task.status == TaskStatus.PENDING

    assert services.dispatch_pending_tasks() == []
    Task.objects.filter(pk=task.pk).update(run_at=timezone.now() - timedelta(seconds=1))
    orders = services.dispatch_pending_tasks()

    assert [(order.task_id, order.attempt) for order in orders] == [(str(task.pk), 2)]


def test_the_wait_doubles_with_jitter_within_20_percent_and_never_past_the_cap(settings):
    settings.TASKHUB_TASK_MAX_RETRY_BACKOFF = 100
    rand = random.Random(15)

    def delays(attempt: int) -> list[float]:
        return [
            services.task_retry_delay(retry_backoff=10, failed_attempt=attempt, rand=rand)
            for _ in range(200)
        ]

    for attempt, base in ((1, 10), (2, 20), (3, 40)):
        sample = delays(attempt)
        assert base * 0.8 <= min(sample) < base * 0.9  # jittered, both ways
        assert base * 1.1 < max(sample) <= base * 1.2
    capped = delays(5)  # 160 s, capped at 100
    assert max(capped) == 100 and min(capped) >= 80
    assert services.task_retry_delay(retry_backoff=0, failed_attempt=3) == 0


def test_the_event_says_the_wait_the_jitter_drew(alice, monkeypatch):
    class Highest:
        def uniform(self, low: float, high: float) -> float:
            return high

    monkeypatch.setattr(services, "_retry_random", Highest())
    task = services.task_create(
        owner=alice, title="t", params=FAILS, max_attempts=2, retry_backoff=5
    )
    before = timezone.now()

    run_attempt(task)

    retry = updates(task)[-1]["retry"]
    assert retry["in_seconds"] == 6.0
    assert abs((task.run_at - before).total_seconds() - 6.0) < 1
    assert retry["run_at"].endswith("Z") and retry["run_at"] > updates(task)[-1]["updated_at"]


@pytest.mark.django_db(transaction=True)  # the runner closes the connection on a timeout
def test_a_timeout_counts_as_a_failed_attempt(alice, test_kinds):
    task = services.task_create(owner=alice, title="slow", kind="times_out", max_attempts=2)

    run_attempt(task)
    assert task.status == TaskStatus.PENDING
    assert updates(task)[-1]["retry"]["error"] == f"timed out after {task.timeout} s"
    run_attempt(task)

    assert task.status == TaskStatus.FAILED
    assert task.error == f"timed out after {task.timeout} s"


def test_a_lost_worker_process_counts_as_a_failed_attempt(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, max_attempts=2)

    services.task_fail_lost_run(task_id=task.pk, attempt=1, reason="signal 9 (SIGKILL)")

    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.PENDING, 2)
    assert "the process running this task died" in updates(task)[-1]["retry"]["error"]


def test_the_reaper_counts_a_stalled_run_as_a_failed_attempt(alice):
    long_ago = timezone.now() - timedelta(hours=1)
    task = make_task(
        owner=alice, status=TaskStatus.IN_PROGRESS, max_attempts=3, timeout=1, started_at=long_ago
    )

    assert services.reap_stalled_tasks() == 1

    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.PENDING, 2)
    assert task.error == services.WORKER_LOST


def test_an_interrupted_run_with_attempts_left_goes_back_to_pending(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, max_attempts=2, worker="w@x")

    assert services.tasks_interrupt_on_worker(worker="w@x") == 1

    task.refresh_from_db()
    assert task.status == TaskStatus.PENDING
    assert task.run_at > timezone.now()


def test_the_last_attempt_of_a_lost_run_is_final(alice):
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, max_attempts=2, attempts=2)

    services.task_fail_lost_run(task_id=task.pk, attempt=2, reason="signal 9 (SIGKILL)")

    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED


# --- Cancel stops retries ----------------------------------------------------------------


def test_a_cancel_while_waiting_for_the_retry_stops_it(alice):
    task = services.task_create(
        owner=alice, title="t", params=FAILS, max_attempts=3, retry_backoff=1
    )
    run_attempt(task)
    assert task.status == TaskStatus.PENDING

    services.task_cancel(task=task)
    Task.objects.filter(pk=task.pk).update(run_at=timezone.now() - timedelta(seconds=1))

    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELLED
    # The cancel's own reason, not the failed attempt's error it found on the row.
    assert task.error == services.CANCELLED_ON_REQUEST
    assert services.dispatch_pending_tasks() == []


def test_a_failure_after_a_cancel_was_asked_is_final(alice):
    task = make_task(
        owner=alice,
        status=TaskStatus.IN_PROGRESS,
        max_attempts=3,
        stop_requested=StopRequest.CANCEL,
    )

    services.task_fail(task_id=task.pk, error="boom", attempt=1)

    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert task.attempts == 1


def test_a_run_ended_by_a_cancel_is_cancelled_not_retried(alice):
    task = make_task(
        owner=alice,
        status=TaskStatus.IN_PROGRESS,
        max_attempts=3,
        stop_requested=StopRequest.CANCEL,
    )

    services.task_end_unfinished_run(task_id=task.pk, error="killed", attempt=1)

    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELLED


def test_a_cancel_of_the_next_attempt_says_cancelled_not_the_previous_error(alice):
    task = services.task_create(
        owner=alice, title="t", params={"seconds": 0, "steps": 1}, max_attempts=2
    )
    Task.objects.filter(pk=task.pk).update(
        status=TaskStatus.QUEUED, attempts=2, error="attempt 1's error"
    )
    services.task_start(task_id=task.pk, worker="w")
    services.task_cancel(task=task)

    services.task_mark_cancelled(task_id=task.pk)

    task.refresh_from_db()
    assert task.error == services.CANCELLED_ON_REQUEST


# --- The policy at create ----------------------------------------------------------------


def test_the_policy_comes_from_the_request_else_the_kind_else_the_settings(alice, settings):
    settings.TASKHUB_TASK_DEFAULT_MAX_ATTEMPTS = 4
    settings.TASKHUB_TASK_DEFAULT_RETRY_BACKOFF = 7

    asked = services.task_create(
        owner=alice, title="a", kind="flaky", max_attempts=5, retry_backoff=0
    )
    of_kind = services.task_create(owner=alice, title="b", kind="flaky")
    default = services.task_create(owner=alice, title="c", kind="echo")

    assert (asked.max_attempts, asked.retry_backoff) == (5, 0)
    assert (of_kind.max_attempts, of_kind.retry_backoff) == (3, 2)  # builtin.flaky declares
    assert (default.max_attempts, default.retry_backoff) == (4, 7)
    assert updates(of_kind)[0]["max_attempts"] == 3


def test_a_kind_declaring_more_than_the_limits_gets_the_limits(alice, settings, test_kinds):
    settings.TASKHUB_TASK_MAX_ATTEMPTS = 6
    settings.TASKHUB_TASK_MAX_RETRY_BACKOFF = 300

    task = services.task_create(owner=alice, title="t", kind="declares_a_lot")

    assert (task.max_attempts, task.retry_backoff) == (6, 300)
    assert registry.kind_retry_defaults("no-such-kind") == (None, None)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"max_attempts": 0}, "max_attempts", "Must be between 1 and 10"),
        ({"max_attempts": 11}, "max_attempts", "Must be between 1 and 10"),
        ({"retry_backoff": -1}, "retry_backoff", "Must be between 0 and 3600 seconds."),
        ({"retry_backoff": 3601}, "retry_backoff", "Must be between 0 and 3600 seconds."),
    ],
)
def test_a_policy_out_of_range_is_refused_saying_the_range(alice, fields, field, message):
    with pytest.raises(ValidationError) as refused:
        services.task_create(owner=alice, title="t", **fields)

    assert message in refused.value.message_dict[field][0]
    assert not Task.objects.exists()


# --- Manual retry ------------------------------------------------------------------------


def test_a_manual_retry_with_new_params_records_them_in_the_history(alice):
    task = services.task_create(owner=alice, title="t", params=FAILS)
    run_attempt(task)
    assert task.status == TaskStatus.FAILED

    retried = services.task_retry(task=task, params={"seconds": 0, "steps": 2})

    assert (retried.status, retried.attempts) == (TaskStatus.PENDING, 2)
    assert retried.params == {"seconds": 0, "steps": 2}
    event = updates(task)[-1]
    assert (event["previous_status"], event["status"]) == ("failed", "pending")
    assert event["params_changed"] is True
    assert event["params"] == {"seconds": 0, "steps": 2}
    assert event["previous_params"] == FAILS
    assert "retry" not in event
    assert run_attempt(task).status == TaskStatus.COMPLETED


def test_a_manual_retry_without_params_keeps_them_and_says_so(alice):
    task = make_task(owner=alice, status=TaskStatus.FAILED, params={"a": 1}, error="boom")

    services.task_retry(task=task)

    task.refresh_from_db()
    assert task.params == {"a": 1} and task.error == ""
    event = updates(task)[-1]
    assert event["params_changed"] is False
    assert "params" not in event and "previous_params" not in event


def test_a_manual_retry_runs_now_even_if_a_stopped_retry_was_due_later(alice):
    later = timezone.now() + timedelta(hours=1)
    task = make_task(owner=alice, status=TaskStatus.CANCELLED, run_at=later)

    services.task_retry(task=task)

    task.refresh_from_db()
    assert task.run_at is None
    assert [o.task_id for o in services.dispatch_pending_tasks()] == [str(task.pk)]


def test_a_manual_retry_with_bad_params_is_refused_and_changes_nothing(alice):
    task = make_task(owner=alice, status=TaskStatus.FAILED, params={"a": 1})

    with pytest.raises(ValidationError) as refused:
        services.task_retry(task=task, params=["not", "an", "object"])

    assert refused.value.message_dict == {"params": ["Must be a JSON object."]}
    task.refresh_from_db()
    assert (task.status, task.params, task.attempts) == (TaskStatus.FAILED, {"a": 1}, 1)


def test_a_running_task_cannot_be_retried_by_hand(alice):
    # in_progress -> pending is the automatic retry's, never a button's.
    task = make_task(owner=alice, status=TaskStatus.IN_PROGRESS, max_attempts=3)

    with pytest.raises(ConflictError):
        services.task_retry(task=task)

    task.refresh_from_db()
    assert task.status == TaskStatus.IN_PROGRESS


# --- REST --------------------------------------------------------------------------------


def test_rest_create_takes_and_shows_the_policy(alice, client_for):
    client = client_for(alice)

    created = client.post(
        "/api/tasks/",
        {"title": "t", "kind": "echo", "max_attempts": 3, "retry_backoff": 5},
        format="json",
    )
    default = client.post("/api/tasks/", {"title": "t", "kind": "flaky"}, format="json")

    assert created.status_code == 201, created.content
    assert (created.json()["max_attempts"], created.json()["retry_backoff"]) == (3, 5)
    assert (default.json()["max_attempts"], default.json()["retry_backoff"]) == (3, 2)
    detail = client.get(f"/api/tasks/{created.json()['id']}/").json()
    assert (detail["max_attempts"], detail["retry_backoff"]) == (3, 5)


def test_rest_create_refuses_a_bad_policy_naming_each_field(alice, client_for):
    response = client_for(alice).post(
        "/api/tasks/", {"title": "t", "max_attempts": 99, "retry_backoff": -3}, format="json"
    )

    assert response.status_code == 400
    assert set(response.json()) == {"max_attempts", "retry_backoff"}
    assert "between 1 and 10" in response.json()["max_attempts"][0]


def test_rest_retry_with_params_edits_and_reruns(alice, client_for):
    task = make_task(owner=alice, status=TaskStatus.FAILED, kind="echo", params={"a": 1})

    response = client_for(alice).post(
        f"/api/tasks/{task.pk}/retry/", {"params": {"a": 2}}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["params"] == {"a": 2}
    assert (response.json()["status"], response.json()["attempts"]) == ("pending", 2)
    assert updates(task)[-1]["params_changed"] is True


def test_rest_retry_without_a_body_still_works(alice, client_for):
    task = make_task(owner=alice, status=TaskStatus.CANCELLED, params={"a": 1})

    response = client_for(alice).post(f"/api/tasks/{task.pk}/retry/")

    assert response.status_code == 200, response.content
    assert response.json()["params"] == {"a": 1}


@pytest.mark.parametrize("params", [[1, 2], "text", None, {"x": "y" * 20000}])
def test_rest_retry_with_bad_params_is_400_and_changes_nothing(alice, client_for, params):
    task = make_task(owner=alice, status=TaskStatus.FAILED, params={"a": 1})

    response = client_for(alice).post(
        f"/api/tasks/{task.pk}/retry/", {"params": params}, format="json"
    )

    assert response.status_code == 400, response.content
    assert "params" in response.json()
    task.refresh_from_db()
    assert (task.status, task.params) == (TaskStatus.FAILED, {"a": 1})


def test_rest_retry_of_bobs_task_is_404_whatever_the_body(alice, bob, client_for):
    task = make_task(owner=bob, status=TaskStatus.FAILED)

    response = client_for(alice).post(
        f"/api/tasks/{task.pk}/retry/", {"params": [1]}, format="json"
    )

    assert response.status_code == 404


# --- End to end: a real worker, beat and Daphne, a client on the socket ------------------


@pytest.fixture
def beat_process(celery_worker_process, tmp_path):
    """Beat's dispatcher tick: a retry waits for its run_at, and only the tick (not a
    create's nudge) picks it up then."""
    beat = testing.start_beat(schedule_dir=tmp_path)
    yield beat
    beat.stop()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_client_sees_each_retry_then_the_final_failure_then_an_edited_rerun(
    alice, daphne_server, beat_process
):
    token = await sync_to_async(access_token_for)(alice)
    socket = await open_network(daphne_server, token=token)
    assert (await socket.receive())["type"] == "welcome"
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=daphne_server, headers=headers) as http:
        response = await http.post(
            "/api/tasks/",
            json={
                "title": "flaky e2e",
                "params": {"seconds": 0.1, "steps": 1, "fail_at_step": 1},
                "max_attempts": 3,
                "retry_backoff": 1,
            },
        )
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]

        def ended(status: str):
            return lambda f: (
                f["type"] == "task.updated"
                and f["data"]["task_id"] == task_id
                and f["data"]["status"] == status
            )

        frames = await socket.receive_until(ended("failed"), timeout=60)
        updates = [f for f in frames if f["type"] == "task.updated"]
        assert [u["data"]["status"] for u in updates] == [
            "pending", "queued", "in_progress",
            "pending", "queued", "in_progress",
            "pending", "queued", "in_progress",
            "failed",
        ]  # fmt: skip
        retries = [(i, u["data"]["retry"]) for i, u in enumerate(updates) if "retry" in u["data"]]
        assert [(r["attempt"], r["of"]) for _, r in retries] == [(2, 3), (3, 3)]
        assert 0.8 <= retries[0][1]["in_seconds"] <= 1.2
        assert 1.6 <= retries[1][1]["in_seconds"] <= 2.4
        assert all("simulated failure at step 1" in r["error"] for _, r in retries)
        for index, retry in retries:
            # The dispatcher queued the next attempt only once its run_at had come.
            assert _at(updates[index + 1]["ts"]) >= _at(retry["run_at"])
        assert updates[-1]["data"]["attempts"] == 3
        # The retries are not terminal: the only inbox entry follows the final failure.
        assert not [f for f in frames if f["type"] == "notification.new"]
        notification = (await socket.receive_until(lambda f: f["type"] == "notification.new"))[-1]
        assert notification["data"]["title"] == "Task “flaky e2e” failed"

        # Edit and re-run: a fourth attempt with params that work.
        response = await http.post(
            f"/api/tasks/{task_id}/retry/", json={"params": {"seconds": 0.1, "steps": 1}}
        )
        assert response.status_code == 200, response.text
        frames = await socket.receive_until(ended("completed"), timeout=60)
    rerun = [f["data"] for f in frames if f["type"] == "task.updated"]
    assert (rerun[0]["status"], rerun[0]["previous_status"]) == ("pending", "failed")
    assert rerun[0]["params_changed"] is True
    assert rerun[0]["params"] == {"seconds": 0.1, "steps": 1}
    assert rerun[-1]["attempts"] == 4
    await socket.close()


def test_the_admin_shows_the_policy(operator, alice):
    task = services.task_create(
        owner=alice, title="t", kind="echo", max_attempts=4, retry_backoff=30
    )

    page = operator.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    listing = operator.get("/admin/tasks/task/").content.decode()

    assert "Max attempts" in page and "Retry backoff" in page
    assert ">30<" in page.replace("\n", "").replace(" ", "") or "30</div>" in page
    assert "column-max_attempts" in listing


# --- gRPC --------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_create_takes_the_policy_and_refuses_a_bad_one(alice):
    import grpc

    from tasks.grpc.gen import taskhub_pb2 as pb
    from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
    from tasks.tests.test_grpc import bearer, field_violations, start_grpcserver

    server, address = start_grpcserver()
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub = pb_grpc.TaskServiceStub(channel)

            def create(**fields):
                request = pb.CreateTaskRequest(title="t", kind="flaky", **fields)
                return stub.CreateTask(request, metadata=bearer(alice), timeout=10)

            asked = create(max_attempts=4, retry_backoff=0)
            of_kind = create()
            with pytest.raises(grpc.RpcError) as refused:
                create(max_attempts=0, retry_backoff=4000)
    finally:
        server.stop()

    assert (asked.max_attempts, asked.retry_backoff) == (4, 0)
    assert (of_kind.max_attempts, of_kind.retry_backoff) == (3, 2)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    assert "Must be between 1 and 10" in violations["max_attempts"]
    assert "Must be between 0 and 3600 seconds." in violations["retry_backoff"]
