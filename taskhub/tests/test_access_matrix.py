"""Bob never reaches Alice's objects (issue 13, S5; OWASP API1, BOLA).

One matrix of every object-taking endpoint: each REST route with an object in its path,
the ones that take an object in the query (legacy check-result, task events, search,
events, notifications), and every TaskService RPC. Bob's request for Alice's object is
404 (gRPC NOT_FOUND), never 403 and never her data, and her object is unchanged after.
The test enumerates the URLconf and the service descriptor and fails on a route or RPC
the matrix does not name: a new endpoint has to join it.

The WebSocket surface has a matrix of its own (SOCKET_MATRIX): every client command of
/ws, enumerated from the consumer's own handlers and notifications.protocol's command
registry, sent by Bob's socket naming Alice's object, answered with the documented
`error` code (docs/protocol.md) and nothing of hers, live or resumed.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from asgiref.sync import sync_to_async
from django.urls import URLPattern, URLResolver, get_resolver

from chat import services as chat_services
from chat.models import ChatParticipant, ChatRoom, Message
from conftest import access_token_for
from notifications import protocol
from notifications import services as notification_services
from notifications.consumers import HANDLERS as SOCKET_OWN_COMMANDS
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
# The browser's pages that take an object: Bob, signed in with a session, asks for Alice's.
PAGE_MATRIX = {"task-page": "/tasks/{task}/"}
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
GRPC_METHODS = {"CreateTask", "GetTask", "ListTasks", "CancelTask", "RetryTask", "WatchTasks"}


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
    unlisted = routes - set(PATH_MATRIX) - set(PAGE_MATRIX) - NOT_OBJECT_ROUTES
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
def test_bob_signed_in_gets_404_for_alices_object_pages(alice, bob, alices_objects, client):
    client.force_login(bob)
    answers = {
        name: client.get(path.format(**alices_objects)).status_code
        for name, path in PAGE_MATRIX.items()
    }
    assert answers == {name: 404 for name in PAGE_MATRIX}


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
        (grpc_stub.RetryTask, pb.RetryTaskRequest(id=str(alices_objects["failed_task"]))),
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


# --- The WebSocket surface ----------------------------------------------------------------

# Every client command of /ws -> what Bob's socket sends naming Alice's object, and the
# `error` code it gets back (the socket stays open; docs/protocol.md, "Error codes"), or
# None for a command that cannot name another user's object: then only Bob's own events
# may come back. "{room}" is Alice's private room, "{message}" her message in it,
# "{public_message}" her message in a public room (readable by Bob, not his to edit).
# There is no socket command to read or mark notifications, or to delete a message (REST
# only, in PATH_MATRIX); her notifications reaching his socket is checked live below.
SOCKET_MATRIX: dict[str, list[tuple[dict[str, Any], str | None]]] = {
    # The stream a socket follows is its token's user's: resume names only a position, and
    # from 0 it replays Bob's log, none of Alice's (a task.updated and a notification.new).
    protocol.RESUME: [({"type": "resume", "last_event_id": 0}, None)],
    protocol.CHAT_SUBSCRIBE: [({"type": "subscribe.chat", "room": "{room}"}, "not_found")],
    protocol.CHAT_UNSUBSCRIBE: [({"type": "unsubscribe.chat", "room": "{room}"}, "not_found")],
    protocol.CHAT_MESSAGE_POST: [
        ({"type": "chat.message.post", "room": "{room}", "text": "bob was here"}, "not_found")
    ],
    protocol.CHAT_MESSAGE_EDIT: [
        ({"type": "chat.message.edit", "message_id": "{message}", "text": "bob"}, "not_found"),
        (
            {"type": "chat.message.edit", "message_id": "{public_message}", "text": "bob"},
            "forbidden",
        ),
    ],
    protocol.CHAT_TYPING: [({"type": "chat.typing", "room": "{room}"}, "not_found")],
}
# Client commands that take no object at all, with why.
SOCKET_NOT_OBJECT_COMMANDS = {protocol.PING: "answers pong, names nothing"}


def socket_commands() -> set[str]:
    """Every client command type /ws handles: the consumer's own and every one an app
    registered, or may register, in notifications.protocol's command registry."""
    return (
        set(SOCKET_OWN_COMMANDS)
        | set(protocol.PLUGGABLE_COMMANDS)
        | set(protocol.client_command_handlers)
    )


def test_the_socket_matrix_names_every_client_command():
    commands = socket_commands()
    unlisted = commands - set(SOCKET_MATRIX) - set(SOCKET_NOT_OBJECT_COMMANDS)
    assert not unlisted, f"add these socket commands to SOCKET_MATRIX (or say why not): {unlisted}"
    assert set(SOCKET_MATRIX) <= commands, "SOCKET_MATRIX names a command /ws does not have"


def fill(template: dict[str, Any], objects: dict[str, Any], ref: str) -> dict[str, Any]:
    """The frame with "{name}" values replaced by Alice's objects (ints stay ints)."""
    frame = {
        key: objects[value[1:-1]] if isinstance(value, str) and value[:1] == "{" else value
        for key, value in template.items()
    }
    return {**frame, "ref": ref}


def socket_objects(alice, bob, alices_objects) -> dict[str, Any]:
    """Alice's objects of the REST matrix, her message in a public room, a task.updated in
    her event log; one event in Bob's own log (a resume that returns nothing proves
    nothing)."""
    from tasks import services as task_services

    lobby = chat_services.chat_room_create(creator=alice, name="Lobby", is_public=True)
    public_message = chat_services.chat_message_post(room=lobby, author=alice, text="secret hi")
    task_services.task_create(owner=alice, title="alice's secret run", kind="echo")
    notification_services.notify(user_id=bob.pk, title="bob's own")
    return {**alices_objects, "public_message": public_message.pk}


def assert_nothing_of_alices(frames: list[dict[str, Any]], alice, objects) -> None:
    text = json.dumps(frames)
    assert "secret" not in text, frames
    assert str(objects["task"]) not in text, frames
    assert '"username":"alice"' not in text.replace(" ", ""), frames
    assert not any(f.get("data", {}).get("user_id") == alice.pk for f in frames), frames


@pytest.mark.django_db(transaction=True)
async def test_bobs_socket_is_refused_each_of_alices_objects_and_hears_nothing_of_hers(
    alice, bob, alices_objects, connect, settings
):
    settings.TASKHUB_WS_MAX_MESSAGES_PER_SECOND = 1000  # the matrix, not the rate limit
    objects = await sync_to_async(socket_objects)(alice, bob, alices_objects)
    before = await sync_to_async(snapshot)(alice)
    alice_tab = await connect(alice)
    await alice_tab.subscribe(objects["room"])

    # Connecting with last_event_id=0 replays Bob's own log: his one event, none of hers.
    bob_tab = await connect(bob, query="last_event_id=0")
    replayed = await bob_tab.ping()
    assert [(f["type"], f["data"]["title"]) for f in replayed] == [
        ("notification.new", "bob's own")
    ]
    heard = list(replayed)

    answers = {}
    for command, rows in SOCKET_MATRIX.items():
        for number, (template, code) in enumerate(rows):
            ref = f"{command}#{number}"
            await bob_tab.send(fill(template, objects, ref))
            got = await bob_tab.ping()  # everything the command caused, then the pong
            heard += got
            if code is None:
                assert all(f["type"] in protocol.PERSISTED_TYPES for f in got), got
                assert [f["data"].get("title") for f in got] == ["bob's own"], got
                answers[ref] = None
            else:
                assert [f["type"] for f in got] == ["error"], got
                assert got[0]["ref"] == ref, got
                answers[ref] = got[0]["data"]["code"]
    assert answers == {
        f"{command}#{number}": code
        for command, rows in SOCKET_MATRIX.items()
        for number, (_, code) in enumerate(rows)
    }

    # Alice's live stream while Bob's socket is open: a task, a notification, a message in
    # her room reach her socket, never his (and his typing attempt never reached hers).
    def alice_acts() -> None:
        from tasks import services as task_services

        task_services.task_create(owner=alice, title="alice's secret later", kind="echo")
        notification_services.notify(user_id=alice.pk, title="alice's secret later")
        room = ChatRoom.objects.get(slug=objects["room"])
        chat_services.chat_message_post(room=room, author=alice, text="secret later")

    await sync_to_async(alice_acts)()
    got_by_alice = await alice_tab.receive_until(
        lambda f: f["type"] == "chat.message.posted" and f["data"]["text"] == "secret later"
    )
    assert {"task.updated", "notification.new"} <= {f["type"] for f in got_by_alice}
    assert "chat.typing" not in {f["type"] for f in got_by_alice}
    heard += await bob_tab.ping()
    assert_nothing_of_alices(heard, alice, objects)
    await bob_tab.assert_nothing_more()
    after = await sync_to_async(snapshot)(alice)
    # Her rows are as they were, but for what she did herself above.
    assert after[2:4] == before[2:4]  # rooms and participants: Bob joined nothing
    assert [m for m in after[4] if m["pk"] in {objects["message"], objects["public_message"]}] == [
        m for m in before[4] if m["pk"] in {objects["message"], objects["public_message"]}
    ]
    assert len(after[4]) == len(before[4]) + 1  # her "secret later"; nothing of Bob's
