"""Bob never reaches Alice's objects (issue 13, S5; OWASP API1, BOLA).

One matrix of every object-taking endpoint: each REST route with an object in its path,
the ones that take an object in the query (legacy check-result, task events, search,
events, notifications), and every TaskService RPC. Bob's request for Alice's object is
404 (gRPC NOT_FOUND), never 403 and never her data, and her object is unchanged after.
The test enumerates the URLconf and the service descriptor and fails on a route or RPC
the matrix does not name: a new endpoint has to join it.
"""

from __future__ import annotations

import grpc
import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from chat import services as chat_services
from chat.models import ChatParticipant, ChatRoom, Message
from conftest import access_token_for
from notifications import services as notification_services
from notifications.models import Notification
from schedules import services as schedule_services
from schedules.models import Schedule
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.grpc.server import create_server
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task
from webhooks import services as webhook_services
from webhooks.models import WebhookDelivery

# Routes with an object in the path: route name -> the requests Bob makes for Alice's.
# {task}, {notification}, {room} are filled with Alice's objects.
PATH_MATRIX = {
    # GET only: PUT/PATCH/DELETE are 405 for any id, Alice's or none (no write there).
    "task-detail": [("get", "/api/tasks/{task}/", None)],
    "task-cancel": [("post", "/api/tasks/{task}/cancel/", None)],
    "task-retry": [("post", "/api/tasks/{failed_task}/retry/", None)],
    "task-events": [("get", "/api/tasks/{task}/events/", None)],
    "notification-read": [("post", "/api/notifications/{notification}/read/", None)],
    "chat-room-detail": [("get", "/api/chat/rooms/{room}/", None)],
    "chat-room-join": [("post", "/api/chat/rooms/{room}/join/", None)],
    "chat-room-leave": [("post", "/api/chat/rooms/{room}/leave/", None)],
    "chat-messages": [("get", "/api/chat/rooms/{room}/messages/", None)],
    "chat-room-unread": [("get", "/api/chat/rooms/{room}/unread/", None)],
    "chat-room-read": [("post", "/api/chat/rooms/{room}/read/", {"last_read_id": 1})],
    "schedule-detail": [
        ("get", "/api/schedules/{schedule}/", None),
        ("patch", "/api/schedules/{schedule}/", {"enabled": False}),
        ("put", "/api/schedules/{schedule}/", {"cron": "* * * * *", "task": {"title": "b"}}),
        ("delete", "/api/schedules/{schedule}/", None),
    ],
    "chat-room-invite": [("post", "/api/chat/rooms/{room}/invite/", {"username": "bob"})],
    "chat-message-detail": [("delete", "/api/chat/messages/{message}/", None)],
    "task-webhooks": [("get", "/api/tasks/{task}/webhooks/", None)],
    "task-webhook-redeliver": [
        ("post", "/api/tasks/{failed_task}/webhooks/{delivery}/redeliver/", None)
    ],
}
# Path-parameter routes that take no user's object, with why: everything under admin/
# (Django's admin and the operators' view) is staff only, a different trust level with its
# own tests (tasks/tests/test_admin*.py, taskhub/tests/test_ops_view.py); the reset link's
# own token is its credential (Django's tests cover it).
STAFF_ONLY_PREFIX = "admin/"
NOT_OBJECT_ROUTES = {"password_reset_confirm"}
# Lists and lookups that take an object in the query: Bob asks for Alice's and gets none.
QUERY_MATRIX = {
    "legacy-task-check-result": ("/task/check-result?task_id={task}", 404),
    "search": ("/search?query=secret", 200),
    "event-list": ("/api/events/?after=0", 200),
    "notification-list": ("/api/notifications/", 200),
    "task-list": ("/api/tasks/", 200),
    "chat-room-list": ("/api/chat/rooms/", 200),
    "schedule-list": ("/api/schedules/", 200),
}
GRPC_METHODS = {"CreateTask", "GetTask", "ListTasks", "CancelTask", "WatchTasks"}


def url_patterns(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from url_patterns(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.name


def test_the_matrix_names_every_route_that_takes_an_object():
    routes = {
        name
        for route, name in url_patterns(get_resolver().url_patterns)
        if ("<" in route or "(?P" in route) and not route.startswith(STAFF_ONLY_PREFIX)
    }
    unlisted = routes - set(PATH_MATRIX) - NOT_OBJECT_ROUTES
    assert not unlisted, f"add these routes to PATH_MATRIX (or say why not): {unlisted}"
    all_names = {name for _, name in url_patterns(get_resolver().url_patterns)}
    assert set(QUERY_MATRIX) <= all_names


def test_the_matrix_names_every_rpc_of_the_task_service():
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["TaskService"].methods}
    assert methods == GRPC_METHODS


@pytest.fixture
def alices_objects(alice, bob):
    task = make_task(owner=alice, title="alice's secret", description="secret plans")
    failed = make_task(owner=alice, status=TaskStatus.FAILED, title="alice's secret failure")
    notification = notification_services.notify(user_id=alice.pk, title="alice's secret")
    schedule = schedule_services.schedule_create(
        owner=alice, cron="0 9 * * *", kind="echo", title="alice's secret schedule"
    )
    room = chat_services.chat_room_create(creator=alice, name="Alice secret", is_public=False)
    message = chat_services.chat_message_post(room=room, author=alice, text="secret message")
    delivery = webhook_services.delivery_create(task=failed, url="https://hooks.example.com/a")
    return {
        "delivery": delivery.pk,
        "message": message.pk,
        "task": task.pk,
        "failed_task": failed.pk,
        "notification": notification.pk,
        "room": room.slug,
        "schedule": schedule.pk,
    }


def snapshot(alice):
    return (
        list(Task.objects.filter(owner=alice).order_by("pk").values()),
        list(Notification.objects.filter(user=alice).order_by("pk").values()),
        list(ChatRoom.objects.order_by("pk").values()),
        list(ChatParticipant.objects.order_by("pk").values("room_id", "user_id", "role")),
        list(Message.objects.order_by("pk").values("pk", "text")),
        list(WebhookDelivery.objects.order_by("pk").values("pk", "state", "attempts")),
        list(Schedule.objects.filter(owner=alice).order_by("pk").values()),
    )


@pytest.mark.django_db(transaction=True)
def test_bob_gets_404_for_each_of_alices_objects_over_rest_and_changes_nothing(
    alice, bob, alices_objects, client_for
):
    before = snapshot(alice)
    client = client_for(bob)
    answers = {}
    for name, requests in PATH_MATRIX.items():
        for method, path, body in requests:
            url = path.format(**alices_objects)
            response = getattr(client, method)(url, body, format="json")
            answers[f"{method.upper()} {url}"] = response.status_code
            assert "secret" not in response.content.decode(), (name, url)
    assert {k: v for k, v in answers.items() if v != 404} == {}
    assert snapshot(alice) == before


@pytest.mark.django_db(transaction=True)
def test_bob_finds_none_of_alices_objects_in_lists_searches_and_lookups(
    alice, bob, alices_objects, client_for
):
    client = client_for(bob)
    for name, (path, code) in QUERY_MATRIX.items():
        response = client.get(path.format(**alices_objects))
        assert response.status_code == code, (name, response.content)
        body = response.content.decode()
        assert "secret" not in body, (name, body)
        assert str(alices_objects["task"]) not in body, (name, body)


@pytest.fixture
def grpc_stub(transactional_db):
    server = create_server(port=0, host="127.0.0.1")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.TaskServiceStub(channel)
    server.stop(0)


def test_bob_gets_not_found_for_alices_task_over_grpc(alice, bob, alices_objects, grpc_stub):
    before = snapshot(alice)
    bob_says = (("authorization", f"Bearer {access_token_for(bob)}"),)
    task_id = str(alices_objects["task"])
    for call, request in [
        (grpc_stub.GetTask, pb.GetTaskRequest(id=task_id)),
        (grpc_stub.CancelTask, pb.CancelTaskRequest(id=task_id)),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=bob_says, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    watch = grpc_stub.WatchTasks(
        pb.WatchTasksRequest(task_id=task_id), metadata=bob_says, timeout=10
    )
    with pytest.raises(grpc.RpcError) as caught:
        next(watch)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = grpc_stub.ListTasks(pb.ListTasksRequest(), metadata=bob_says, timeout=10)
    assert list(listed.tasks) == []
    # CreateTask takes no object: what Bob creates is his (no owner field to spoof).
    created = grpc_stub.CreateTask(
        pb.CreateTaskRequest(title="bob's"), metadata=bob_says, timeout=10
    )
    assert Task.objects.get(pk=created.id).owner == bob
    assert snapshot(alice) == before
