"""The gRPC TaskService, spoken to over a real channel.

The server is a real `manage.py grpcserver` process on the test database; the lifecycle
test adds a real Celery worker. Nothing of TaskHub is mocked.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from django.contrib.auth.models import User
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from rest_framework_simplejwt.tokens import RefreshToken

from conftest import access_token_for
from devserver import testing
from notifications import protocol
from notifications.models import Event
from tasks import services
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

S = pb.TaskStatus  # S.Name(S.TASK_STATUS_PENDING) == "TASK_STATUS_PENDING"


def start_grpcserver(
    *, extra_env: dict[str, str] | None = None
) -> tuple[testing.ManagedProcess, str]:
    """`manage.py grpcserver` on a port the OS picks; returns the process and its address."""
    server = testing.ManagedProcess(
        "grpcserver",
        [
            sys.executable,
            "manage.py",
            "grpcserver",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--grace",
            "5",
        ],
        testing.process_env(**(extra_env or {})),
    )
    server.wait_for_output("listening on", timeout=60)
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", server.output).group(1)
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def grpc_address(django_db_setup) -> Iterator[str]:
    server, address = start_grpcserver()
    yield address
    assert server.stop() == 0, server.output[-4000:]


@pytest.fixture
def channel(grpc_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.TaskServiceStub:
    return pb_grpc.TaskServiceStub(channel)


def bearer(user: User) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {access_token_for(user)}"),)


def struct(value: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(value, struct_pb2.Struct())


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT should carry google.rpc.BadRequest details"
    violations = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        violations.update({v.field: v.description for v in bad_request.field_violations})
    return violations


def create(stub, user: User, **fields) -> pb.Task:
    fields.setdefault("title", "a task")
    return stub.CreateTask(pb.CreateTaskRequest(**fields), metadata=bearer(user), timeout=10)


# --- Create, get, list -------------------------------------------------------------------


def test_alice_creates_gets_and_lists_her_task_as_rest_shows_it(stub, alice, client_for):
    created = create(
        stub,
        alice,
        title="Resize photos",
        description="all of them",
        kind="echo",
        params=struct({"width": 640, "ratio": 1.5, "names": ["a", "b"]}),
        timeout=30,
    )
    assert created.status == S.TASK_STATUS_PENDING
    assert (created.title, created.kind, created.timeout, created.attempts) == (
        "Resize photos",
        "echo",
        30,
        1,
    )

    fetched = stub.GetTask(pb.GetTaskRequest(id=created.id), metadata=bearer(alice), timeout=10)
    assert fetched == created

    listed = stub.ListTasks(pb.ListTasksRequest(), metadata=bearer(alice), timeout=10)
    assert [task.id for task in listed.tasks] == [created.id]
    assert listed.next_page_token == ""

    # REST shows the same task: integral numbers stayed integers despite protobuf's doubles.
    rest = client_for(alice).get(f"/api/tasks/{created.id}/").json()
    assert rest["params"] == {"width": 640, "ratio": 1.5, "names": ["a", "b"]}
    assert type(rest["params"]["width"]) is int
    assert json_format.MessageToDict(created.params) == rest["params"]
    assert (rest["title"], rest["description"], rest["status"]) == (
        "Resize photos",
        "all of them",
        "pending",
    )
    assert created.created_at.ToDatetime(tzinfo=UTC) == datetime.fromisoformat(rest["created_at"])
    assert not created.HasField("started_at") and rest["started_at"] is None


def test_list_filters_by_status_and_pages_newest_first_without_repeats(stub, alice):
    ids = [create(stub, alice, title=f"task {n}").id for n in range(5)]
    cancelled = stub.CancelTask(pb.CancelTaskRequest(id=ids[0]), metadata=bearer(alice), timeout=10)
    assert cancelled.status == S.TASK_STATUS_CANCELLED

    seen, token, pages = [], "", 0
    while True:
        page = stub.ListTasks(
            pb.ListTasksRequest(status=S.TASK_STATUS_PENDING, page_size=2, page_token=token),
            metadata=bearer(alice),
            timeout=10,
        )
        pages += 1
        assert len(page.tasks) <= 2
        assert {task.status for task in page.tasks} <= {S.TASK_STATUS_PENDING}
        seen += [task.id for task in page.tasks]
        # A task created mid-paging is newer than every page boundary: it never shows up
        # in a later page nor pushes a row into a second appearance.
        create(stub, alice, title="created while paging")
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids[1:]))
    assert pages == 2

    error = rpc_error(
        stub.ListTasks,
        pb.ListTasksRequest(status=S.TASK_STATUS_CANCELLED, page_token=page_token_of(stub, alice)),
        metadata=bearer(alice),
        timeout=10,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in field_violations(error)
    error = rpc_error(
        stub.ListTasks,
        pb.ListTasksRequest(page_token="garbage!"),
        metadata=bearer(alice),
        timeout=10,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in field_violations(error)


def page_token_of(stub, user: User) -> str:
    """A valid next_page_token of an unfiltered first page of one row."""
    page = stub.ListTasks(pb.ListTasksRequest(page_size=1), metadata=bearer(user), timeout=10)
    assert page.next_page_token
    return page.next_page_token


def test_page_size_is_capped_at_100(stub, alice):
    Task.objects.bulk_create(Task(owner=alice, title=f"bulk {n}", timeout=60) for n in range(101))
    page = stub.ListTasks(pb.ListTasksRequest(page_size=500), metadata=bearer(alice), timeout=10)
    assert len(page.tasks) == 100
    assert page.next_page_token
    rest = stub.ListTasks(
        pb.ListTasksRequest(page_size=500, page_token=page.next_page_token),
        metadata=bearer(alice),
        timeout=10,
    )
    assert len(rest.tasks) == 1
    assert rest.next_page_token == ""


# --- Access ------------------------------------------------------------------------------


def test_bob_has_no_access_to_alice_task(stub, alice, bob):
    task = create(stub, alice, title="alice's secret")

    for call, request in [
        (stub.GetTask, pb.GetTaskRequest(id=task.id)),
        (stub.CancelTask, pb.CancelTaskRequest(id=task.id)),
    ]:
        error = rpc_error(call, request, metadata=bearer(bob), timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert stub.ListTasks(pb.ListTasksRequest(), metadata=bearer(bob), timeout=10).tasks == []
    watch = stub.WatchTasks(pb.WatchTasksRequest(task_id=task.id), metadata=bearer(bob), timeout=10)
    assert rpc_error(next, watch).code() == grpc.StatusCode.NOT_FOUND
    # ...and the task is untouched.
    assert stub.GetTask(
        pb.GetTaskRequest(id=task.id), metadata=bearer(alice), timeout=10
    ).status == (S.TASK_STATUS_PENDING)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "00000000-0000-0000-0000-000000000000"])
def test_malformed_or_unknown_id_is_not_found(stub, alice, bad_id):
    error = rpc_error(
        stub.GetTask, pb.GetTaskRequest(id=bad_id), metadata=bearer(alice), timeout=10
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_calls_without_a_valid_token_are_unauthenticated(stub, alice):
    token = access_token_for(alice)
    for metadata in [
        (),
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", f"Token {token}"),),
        # A refresh token is not an access token.
        (("authorization", f"Bearer {RefreshToken.for_user(alice)}"),),
    ]:
        error = rpc_error(stub.ListTasks, pb.ListTasksRequest(), metadata=metadata, timeout=10)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        error = rpc_error(
            stub.CreateTask, pb.CreateTaskRequest(title="x"), metadata=metadata, timeout=10
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = stub.WatchTasks(pb.WatchTasksRequest(), metadata=metadata, timeout=10)
        assert rpc_error(next, watch).code() == grpc.StatusCode.UNAUTHENTICATED
    assert not Task.objects.exists()


# --- Errors ------------------------------------------------------------------------------


def test_bad_fields_are_invalid_argument_naming_each_field(stub, alice):
    error = rpc_error(create, stub, alice, title="t", timeout=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"timeout"}
    assert "timeout" in error.details()  # for clients that only read the message

    error = rpc_error(create, stub, alice, title="t", timeout=10**6)
    assert "3600" in field_violations(error)["timeout"]

    error = rpc_error(create, stub, alice, title="", kind="teleport")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert set(violations) == {"title", "kind"}
    assert "teleport" in violations["kind"]

    assert not Task.objects.exists()


def test_cancel_of_a_completed_task_is_failed_precondition(stub, alice):
    task = create(stub, alice, kind="echo")
    # Run it through the state machine by hand: this test is about the status code.
    services.task_transition(task_id=task.id, to=TaskStatus.QUEUED)
    services.task_start(task_id=task.id, worker="test")
    services.task_complete(task_id=task.id, result={"ok": True})

    error = rpc_error(
        stub.CancelTask, pb.CancelTaskRequest(id=task.id), metadata=bearer(alice), timeout=10
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed" in error.details()
    assert Task.objects.get(pk=task.id).status == TaskStatus.COMPLETED


def run_to(task_id: str, *, error: str | None = None) -> None:
    """Through queued and in_progress by hand to completed, or failed with `error`."""
    services.task_transition(task_id=task_id, to=TaskStatus.QUEUED)
    services.task_start(task_id=task_id, worker="test")
    if error is None:
        services.task_complete(task_id=task_id, result={"ok": True})
    else:
        services.task_fail(task_id=task_id, error=error)


def test_retry_runs_a_failed_task_again_with_edited_params(stub, alice):
    task = create(stub, alice, kind="echo", params=struct({"n": 1}))
    run_to(task.id, error="boom")

    retried = stub.RetryTask(
        pb.RetryTaskRequest(id=task.id, params=struct({"n": 2})), metadata=bearer(alice), timeout=10
    )

    assert (S.Name(retried.status), retried.attempts) == ("TASK_STATUS_PENDING", 2)
    assert json_format.MessageToDict(retried.params) == {"n": 2}
    assert retried.error == ""
    event = Event.objects.filter(user=alice, task_id=task.id).latest("seq")
    assert (event.data["params_changed"], event.data["previous_params"]) == (True, {"n": 1})


def test_retry_without_params_keeps_them_and_bad_ones_or_a_live_task_are_refused(stub, alice):
    task = create(stub, alice, kind="simulate", params=struct({"seconds": 1}))
    live = rpc_error(stub.RetryTask, pb.RetryTaskRequest(id=task.id), metadata=bearer(alice))
    assert live.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only a failed or cancelled task can be retried" in live.details()
    run_to(task.id, error="boom")

    bad = rpc_error(
        stub.RetryTask,
        pb.RetryTaskRequest(id=task.id, params=struct({"blob": "x" * 20_000})),  # > 16 KB
        metadata=bearer(alice),
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params" in field_violations(bad)
    retried = stub.RetryTask(pb.RetryTaskRequest(id=task.id), metadata=bearer(alice), timeout=10)
    assert json_format.MessageToDict(retried.params) == {"seconds": 1}


# --- WatchTasks --------------------------------------------------------------------------


def read_events(stream, *, until) -> list[pb.TaskEvent]:
    events = []
    for event in stream:
        events.append(event)
        if until(events):
            return events
    raise AssertionError(f"stream ended before the condition: {events}")


def persisted_task_event_ids(user: User) -> list[int]:
    return list(
        Event.objects.filter(user=user, type=protocol.TASK_UPDATED)
        .order_by("seq")
        .values_list("seq", flat=True)
    )


def test_watch_follows_a_task_run_by_a_worker_then_resumes_without_gaps(
    stub, alice, celery_worker_process
):
    stream = stub.WatchTasks(pb.WatchTasksRequest(), metadata=bearer(alice), timeout=60)
    task = create(stub, alice, title="watch me", params=struct({"seconds": 0.3, "steps": 3}))

    events = read_events(stream, until=lambda e: e[-1].task.status == S.TASK_STATUS_COMPLETED)
    stream.cancel()
    assert [S.Name(e.task.status) for e in events] == [
        "TASK_STATUS_PENDING",
        "TASK_STATUS_QUEUED",
        "TASK_STATUS_IN_PROGRESS",
        "TASK_STATUS_COMPLETED",
    ]
    assert {e.task.task_id for e in events} == {task.id}
    assert {e.type for e in events} == {"task.updated"}
    assert events[0].task.previous_status == S.TASK_STATUS_UNSPECIFIED
    assert events[-1].task.previous_status == S.TASK_STATUS_IN_PROGRESS
    assert json_format.MessageToDict(events[-1].task.result)["steps"] == 3
    ids = [e.id for e in events]
    assert ids == persisted_task_event_ids(alice)  # every persisted event, in order, once

    # Resume after the second event: the two missed ones first, then live ones.
    resumed = stub.WatchTasks(
        pb.WatchTasksRequest(after_event_id=ids[1]), metadata=bearer(alice), timeout=60
    )
    # The newest id of alice's whole event log (notifications take ids too).
    assert int(dict(resumed.initial_metadata())["taskhub-last-event-id"]) >= ids[-1]
    replayed = read_events(resumed, until=lambda e: len(e) == 2)
    assert [e.id for e in replayed] == ids[2:]
    second = create(stub, alice, title="live one", params=struct({"seconds": 0.1, "steps": 1}))
    live = read_events(resumed, until=lambda e: e[-1].task.status == S.TASK_STATUS_COMPLETED)
    resumed.cancel()
    assert {e.task.task_id for e in live} == {second.id}
    assert [e.id for e in replayed + live] == persisted_task_event_ids(alice)[2:]

    # One task's history only.
    only_first = stub.WatchTasks(
        pb.WatchTasksRequest(task_id=task.id), metadata=bearer(alice), timeout=60
    )
    assert [e.id for e in read_events(only_first, until=lambda e: len(e) == 4)] == ids
    only_first.cancel()


def test_watch_carries_the_retry_policy_and_an_automatic_retry(stub, alice):
    task = create(stub, alice, kind="echo", max_attempts=2, retry_backoff=5)
    stream = stub.WatchTasks(
        pb.WatchTasksRequest(task_id=task.id), metadata=bearer(alice), timeout=30
    )

    run_to(task.id, error="boom")

    events = read_events(stream, until=lambda e: e[-1].task.HasField("retry"))
    stream.cancel()
    waiting = events[-1].task
    assert (S.Name(waiting.status), waiting.attempts, waiting.max_attempts) == (
        "TASK_STATUS_PENDING",
        2,
        2,
    )
    assert {e.task.max_attempts for e in events} == {2}
    assert (waiting.retry.attempt, waiting.retry.of, waiting.retry.error) == (2, 2, "boom")
    assert 4 <= waiting.retry.in_seconds <= 6  # retry_backoff 5, jittered ±20 %
    run_at = Task.objects.get(pk=task.id).run_at
    assert waiting.retry.run_at.ToDatetime(tzinfo=UTC) == run_at


def test_watch_reports_a_deleted_task(stub, alice):
    task = create(stub, alice, title="short-lived")
    stream = stub.WatchTasks(pb.WatchTasksRequest(), metadata=bearer(alice), timeout=30)
    read_events(stream, until=lambda e: len(e) == 1)  # its creation

    services.task_delete(task_id=task.id)

    deleted = read_events(stream, until=lambda e: True)[0]
    stream.cancel()
    assert (deleted.type, deleted.task.task_id, deleted.task.title) == (
        "task.deleted",
        task.id,
        "short-lived",
    )
    assert deleted.task.status == S.TASK_STATUS_PENDING  # the status it had
    assert deleted.id == Event.objects.get(user=alice, type=protocol.TASK_DELETED).seq


# --- Health and reflection ---------------------------------------------------------------


def test_health_check_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "taskhub.v1.TaskService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_task_service(channel):
    from google.protobuf.descriptor_pool import DescriptorPool

    database = ProtoReflectionDescriptorDatabase(channel)
    assert "taskhub.v1.TaskService" in database.get_services()
    assert "grpc.health.v1.Health" in database.get_services()
    service = DescriptorPool(database).FindServiceByName("taskhub.v1.TaskService")
    assert {method.name for method in service.methods} == {
        "CreateTask",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "RetryTask",
        "WatchTasks",
    }


# --- Streams and the server's threads ----------------------------------------------------


def open_watch(stub, user: User, *, timeout: float = 60) -> tuple[object, bool]:
    """Start a WatchTasks stream; (stream, accepted). A refused stream has already ended."""
    stream = stub.WatchTasks(pb.WatchTasksRequest(), metadata=bearer(user), timeout=timeout)
    accepted = "taskhub-last-event-id" in dict(stream.initial_metadata())
    return stream, accepted


def accepted_watch(stub, user: User):
    stream, accepted = open_watch(stub, user)
    return stream if accepted else None


def test_streams_are_capped_released_on_cancel_and_deadline_and_ended_by_sigterm(alice):
    # 3 threads: 2 for streams, 1 always kept for unary calls and health checks.
    server, address = start_grpcserver(extra_env={"GRPC_MAX_WORKERS": "3"})
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.TaskServiceStub(channel)
            long_stream, accepted = open_watch(stub, alice)
            assert accepted
            short_stream, accepted = open_watch(stub, alice, timeout=1.5)
            assert accepted

            refused, accepted = open_watch(stub, alice)
            assert not accepted
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Unary calls still get a thread.
            assert create(stub, alice).status == S.TASK_STATUS_PENDING

            # The deadline ends the short stream and frees its slot...
            assert rpc_error(list, short_stream).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            replacement = testing.wait_until(
                lambda: accepted_watch(stub, alice), message="a free slot"
            )
            # ...and so does a client's cancel.
            long_stream.cancel()
            other = testing.wait_until(lambda: accepted_watch(stub, alice), message="a free slot")
            for stream in (replacement, other):
                # Each stream first replays alice's event of the create above.
                assert next(stream).task.status == S.TASK_STATUS_PENDING

            # SIGTERM: open streams end with UNAVAILABLE (reconnect and resume), then exit 0.
            server.proc.send_signal(signal.SIGTERM)
            for stream in (replacement, other):
                error = rpc_error(list, stream)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "after_event_id" in error.details()
            assert server.proc.wait(timeout=30) == 0
            assert "gRPC server stopped" in server.output
    finally:
        server.stop()
