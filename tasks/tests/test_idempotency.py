"""Idempotent creates (issue 15 §1, docs/api.md "Idempotent creates"): a client that
retries a create with the same Idempotency-Key gets the first task back, never a second
one, even when the two requests race on two web processes.

The races are staged, not hoped for: a connection of the test's own holds the user's event
counter row (notifications.models.EventCounter), which every create takes after it has
looked for the key, so both racers are past that look and waiting when it is let go.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from conftest import access_token_for
from devserver import testing
from notifications.models import Event
from taskhub.exceptions import UnprocessableError
from tasks import services
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.models import IdempotencyKey, Task
from tasks.tasks import prune_idempotency_keys
from tasks.tests.row_lock import _conninfo
from tasks.tests.test_grpc import bearer, field_violations, rpc_error, start_grpcserver

REQUEST = {"title": "Count words", "kind": "wordcount", "description": "the cat and the hat"}


def create(user, key: str, **fields) -> services.IdempotentCreate:
    return services.task_create_idempotent(owner=user, key=key, **{**REQUEST, **fields})


def age(key: IdempotencyKey, *, hours: float) -> None:
    IdempotencyKey.objects.filter(pk=key.pk).update(
        created_at=timezone.now() - timedelta(hours=hours)
    )


class EventCounterLock:
    """The user's EventCounter row locked by a connection of the test's own: every create
    of theirs waits for it after it has looked for its key (tasks.services)."""

    def __init__(self, user_id: int) -> None:
        self.holder = psycopg.connect(_conninfo())
        self.holder.execute(
            "INSERT INTO notifications_eventcounter (user_id, last_seq) VALUES (%s, 0) "
            "ON CONFLICT (user_id) DO NOTHING",
            [user_id],
        )
        self.holder.execute(
            "SELECT 1 FROM notifications_eventcounter WHERE user_id = %s FOR UPDATE", [user_id]
        )

    def wait_for_waiters(self, count: int) -> None:
        blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        with psycopg.connect(_conninfo(), autocommit=True) as watcher:
            testing.wait_until(
                lambda: (
                    watcher.execute(blocked, [self.holder.info.backend_pid]).fetchone()[0] >= count
                ),
                timeout=60,
                message=f"{count} creates to wait for the event counter",
            )

    def release(self) -> None:
        self.holder.commit()
        self.holder.close()


# --- The service -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_same_key_and_body_returns_the_first_task_and_makes_no_second(alice):
    first = create(alice, "order-42")
    again = create(alice, "order-42")

    assert (first.created, first.response_status) == (True, 201)
    assert (again.created, again.response_status) == (False, 201)
    assert again.task.pk == first.task.pk
    assert Task.objects.count() == 1
    assert Event.objects.filter(user=alice).count() == 1  # one task, one created event


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_refused_saying_so(alice):
    create(alice, "order-42")

    with pytest.raises(UnprocessableError, match="Idempotency-Key 'order-42' was used with a"):
        create(alice, "order-42", description="another text")

    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_every_field_of_the_request_counts_even_ones_added_later(alice):
    create(alice, "k1")

    # A field this code does not know of (a later feature's) changes the hash too.
    assert services.idempotency_request_hash({**REQUEST, "future": 1}) != (
        services.idempotency_request_hash(REQUEST)
    )
    with pytest.raises(UnprocessableError):
        create(alice, "k1", params={"n": 1})


@pytest.mark.django_db
def test_a_default_the_server_fills_in_is_not_part_of_the_request(alice):
    """A retry that spans a deploy adding a create field with a default (callback_url's
    "" did) still finds its task: only the fields the client sent are compared."""
    sent = set(REQUEST)
    before = create(alice, "order-42", sent_fields=sent)

    after = create(alice, "order-42", sent_fields=sent, callback_url="")

    assert (after.created, after.task.pk) == (False, before.task.pk)
    with pytest.raises(UnprocessableError):
        create(alice, "order-42", sent_fields={*sent, "callback_url"}, callback_url="")


def test_the_hash_is_of_the_content_not_of_its_spelling():
    moment = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    same_moment_elsewhere = moment.astimezone(timezone.get_fixed_timezone(180))
    assert services.idempotency_request_hash(
        {"title": "t", "params": {"a": 1, "b": [1, 2]}, "run_at": moment}
    ) == services.idempotency_request_hash(
        {"run_at": same_moment_elsewhere, "params": {"b": [1, 2], "a": 1}, "title": "t"}
    )


@pytest.mark.django_db
def test_bob_using_alice_key_gets_a_task_of_his_own(alice, bob):
    hers = create(alice, "order-42")
    his = create(bob, "order-42", description="something else entirely")

    assert his.created
    assert his.task.pk != hers.task.pk
    assert his.task.owner == bob
    assert create(alice, "order-42").task.pk == hers.task.pk


@pytest.mark.django_db
def test_a_key_older_than_the_window_counts_as_unused(alice):
    first = create(alice, "order-42")
    age(IdempotencyKey.objects.get(), hours=settings.TASKHUB_IDEMPOTENCY_KEY_HOURS + 0.1)

    # Even with another body: the old key is forgotten, not refused.
    later = create(alice, "order-42", description="a new week, a new text")

    assert later.created
    assert later.task.pk != first.task.pk
    key = IdempotencyKey.objects.get()
    assert key.task_id == later.task.pk
    assert create(alice, "order-42", description="a new week, a new text").task == later.task


@pytest.mark.django_db
def test_a_key_inside_the_window_still_holds(alice):
    first = create(alice, "order-42")
    age(IdempotencyKey.objects.get(), hours=settings.TASKHUB_IDEMPOTENCY_KEY_HOURS - 0.1)

    assert create(alice, "order-42").task.pk == first.task.pk


@pytest.mark.django_db
def test_the_retention_job_deletes_keys_older_than_the_window(alice, bob):
    create(alice, "old")
    create(bob, "old")
    create(alice, "fresh")
    for key in IdempotencyKey.objects.filter(key="old"):
        age(key, hours=settings.TASKHUB_IDEMPOTENCY_KEY_HOURS + 1)

    assert prune_idempotency_keys() == 2

    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]
    assert Task.objects.count() == 3  # the tasks stay; only the keys go


def test_the_retention_job_is_scheduled_on_the_dispatch_queue():
    from taskhub.celery import app

    [entry] = [
        e for e in app.conf.beat_schedule.values() if e["task"] == prune_idempotency_keys.name
    ]
    assert entry["schedule"] <= 3600
    assert settings.CELERY_TASK_ROUTES[prune_idempotency_keys.name] == {"queue": "dispatch"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "Must not be empty."),
        ("k" * 256, "Must be at most 255 characters."),
        ("tab\there", "Must be printable ASCII"),
        ("ключ", "Must be printable ASCII"),
        (" padded", "Must not start or end with a space."),
    ],
)
def test_a_malformed_key_is_refused_with_a_message(alice, key, message):
    with pytest.raises(Exception, match=message) as caught:
        create(alice, key)

    assert caught.type.__name__ == "ValidationError"
    assert Task.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_racing_creates_with_one_key_make_one_task(alice):
    """Both look for the key, find none, make a task; the second's key insert meets the
    first's: it rolls back its task (and that task's event) and answers the first's."""
    lock = EventCounterLock(alice.pk)
    barrier = threading.Barrier(2)

    def racer() -> services.IdempotentCreate:
        barrier.wait(timeout=30)
        try:
            return create(alice, "order-42")
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        racing = [pool.submit(racer) for _ in range(2)]
        try:
            lock.wait_for_waiters(2)
        finally:
            lock.release()
        outcomes = [future.result(timeout=60) for future in racing]

    assert sorted(outcome.created for outcome in outcomes) == [False, True]
    assert outcomes[0].task.pk == outcomes[1].task.pk
    assert Task.objects.count() == 1
    assert list(Event.objects.filter(user=alice).values_list("seq", "task_id")) == [
        (1, outcomes[0].task.pk)
    ]


# --- REST --------------------------------------------------------------------------------


def post(client, body: dict, key: str | None):
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/api/tasks/", body, format="json", headers=headers)


@pytest.mark.django_db
def test_a_retried_post_answers_the_first_status_and_body(alice, client_for):
    client = client_for(alice)
    first = post(client, REQUEST, "3f1c-order-42")
    again = post(client, REQUEST, "3f1c-order-42")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_a_replay_shows_the_task_as_it_is_now(alice, client_for):
    client = client_for(alice)
    first = post(client, REQUEST, "order-42").json()
    client.post(f"/api/tasks/{first['id']}/cancel/")

    again = post(client, REQUEST, "order-42")

    assert again.status_code == 201
    assert (again.json()["id"], again.json()["status"]) == (first["id"], "cancelled")


@pytest.mark.django_db
def test_posts_without_a_key_each_make_a_task(alice, client_for):
    client = client_for(alice)
    assert post(client, REQUEST, None).json()["id"] != post(client, REQUEST, None).json()["id"]


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_422_saying_so(alice, client_for):
    client = client_for(alice)
    post(client, REQUEST, "order-42")

    refused = post(client, {**REQUEST, "title": "Count other words"}, "order-42")

    assert refused.status_code == 422
    assert set(refused.json()) == {"detail"}
    assert (
        "Idempotency-Key 'order-42' was used with a different request body"
        in (refused.json()["detail"])
    )
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_bob_posting_alice_key_gets_his_own_task(alice, bob, client_for):
    hers = post(client_for(alice), REQUEST, "order-42").json()
    his = post(client_for(bob), REQUEST, "order-42")

    assert his.status_code == 201
    assert his.json()["id"] != hers["id"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "Must not be empty."),
        ("k" * 256, "Must be at most 255 characters."),
        ("bell\x07", "Must be printable ASCII"),
    ],
)
def test_a_malformed_key_header_is_400_naming_the_header(alice, client_for, key, message):
    response = post(client_for(alice), REQUEST, key)

    assert response.status_code == 400
    [text] = response.json()["Idempotency-Key"]
    assert text.startswith(message)
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_a_refused_body_does_not_use_up_its_key(alice, client_for):
    client = client_for(alice)
    assert post(client, {**REQUEST, "kind": "no-such-kind"}, "order-42").status_code == 400

    assert post(client, REQUEST, "order-42").status_code == 201
    assert IdempotencyKey.objects.get().task == Task.objects.get()


@pytest.mark.django_db
def test_the_schema_declares_the_header_and_the_422(client_for, alice):
    schema = client_for(alice).get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/tasks/"]["post"]

    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key"
    assert header["schema"]["maxLength"] == 255
    assert "422" in operation["responses"]


@pytest.mark.django_db
def test_operators_see_the_keys_in_the_admin_but_cannot_add_edit_or_delete_them(alice, operator):
    made = create(alice, "order-42")
    key = IdempotencyKey.objects.get()

    listing = operator.get("/admin/tasks/idempotencykey/")
    assert listing.status_code == 200
    assert "order-42" in listing.content.decode()
    assert operator.get("/admin/tasks/idempotencykey/add/").status_code == 403
    assert (
        operator.post(f"/admin/tasks/idempotencykey/{key.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert operator.post(f"/admin/tasks/idempotencykey/{key.pk}/change/", {}).status_code == 403
    assert IdempotencyKey.objects.get().task == made.task


# --- gRPC --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_stub(django_db_setup) -> Iterator[pb_grpc.TaskServiceStub]:
    server, address = start_grpcserver()
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            yield pb_grpc.TaskServiceStub(channel)
    finally:
        assert server.stop() == 0, server.output[-4000:]


def grpc_create(stub, user, **fields):
    request = pb.CreateTaskRequest(**{**REQUEST, **fields})
    return stub.CreateTask.with_call(request, metadata=bearer(user), timeout=10)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_create_with_a_key_returns_the_first_task_and_rest_shares_the_key(
    grpc_stub, alice, client_for
):
    first, first_call = grpc_create(grpc_stub, alice, idempotency_key="order-42")
    again, again_call = grpc_create(grpc_stub, alice, idempotency_key="order-42")

    assert again == first
    assert ("idempotent-replayed", "true") not in first_call.trailing_metadata()
    assert ("idempotent-replayed", "true") in again_call.trailing_metadata()
    # The key is the user's, whichever surface sent it: the same create over REST replays.
    over_rest = post(client_for(alice), REQUEST, "order-42")
    assert (over_rest.status_code, over_rest.json()["id"]) == (201, first.id)
    assert Task.objects.count() == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_grpc_create_without_a_description_replays_over_rest_without_one(
    grpc_stub, alice, client_for
):
    """proto3 sends "" for a description never set: that is 'not sent', as in REST."""
    first, _ = grpc_create(grpc_stub, alice, description="", idempotency_key="order-43")

    over_rest = post(client_for(alice), {"title": "Count words", "kind": "wordcount"}, "order-43")

    assert (over_rest.status_code, over_rest.json()["id"]) == (201, first.id)
    assert Task.objects.count() == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_create_without_a_key_makes_a_task_each_time(grpc_stub, alice):
    assert grpc_create(grpc_stub, alice)[0].id != grpc_create(grpc_stub, alice)[0].id


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_key_reused_with_another_body_is_failed_precondition(grpc_stub, alice):
    grpc_create(grpc_stub, alice, idempotency_key="order-42")

    error = rpc_error(grpc_create, grpc_stub, alice, idempotency_key="order-42", title="other")

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Idempotency-Key 'order-42' was used with a different request body" in (error.details())
    assert Task.objects.count() == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_malformed_key_is_invalid_argument_naming_the_field(grpc_stub, alice):
    error = rpc_error(grpc_create, grpc_stub, alice, idempotency_key="k" * 256)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == {"idempotency_key": "Must be at most 255 characters."}


# --- Two real web processes --------------------------------------------------------------


@pytest.fixture
def two_web_processes(transactional_db) -> Iterator[list[str]]:
    started = []
    try:
        for _ in range(2):
            started.append(testing.start_daphne())
        yield [base_url for _, base_url in started]
    finally:
        for web, _ in started:
            web.stop()


@pytest.mark.e2e
def test_two_identical_posts_racing_on_two_web_processes_make_one_task(two_web_processes, alice):
    """The client's retry lands on the other web process while the first request is still
    in flight: both find no key, and both are held at the same point until both are."""
    headers = {"Authorization": f"Bearer {access_token_for(alice)}", "Idempotency-Key": "k-42"}
    lock = EventCounterLock(alice.pk)

    def send(base_url: str) -> httpx.Response:
        return httpx.post(f"{base_url}/api/tasks/", json=REQUEST, headers=headers, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        racing = [pool.submit(send, base_url) for base_url in two_web_processes]
        try:
            lock.wait_for_waiters(2)
        finally:
            lock.release()
        answers = [future.result(timeout=60) for future in racing]

    assert [answer.status_code for answer in answers] == [201, 201], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert sorted(answer.headers.get("Idempotent-Replayed", "") for answer in answers) == [
        "",
        "true",
    ]
    assert list(Task.objects.values_list("id", flat=True)) == [uuid.UUID(answers[0].json()["id"])]
    assert IdempotencyKey.objects.count() == 1
