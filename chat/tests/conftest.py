"""Chat fixtures: the `general` room and small factories on top of the shared personas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from rest_framework_simplejwt.tokens import RefreshToken

from chat import services
from chat.models import ChatRoom, Message
from notifications.redis_client import close_async_redis, sync_redis
from notifications.selectors import close_async_pool
from taskhub.asgi import application


@pytest.fixture
def general(db) -> ChatRoom:
    """The room the data migration creates. get_or_create: a transactional test before this
    one flushed the tables (and the migration's row with them)."""
    room, _ = ChatRoom.objects.get_or_create(
        slug="general", defaults={"name": "General", "is_public": True}
    )
    return room


@pytest.fixture
def carol(django_user_model) -> User:
    return django_user_model.objects.create_user(username="carol", password="carol-pass-123")


@pytest.fixture
def private_room(alice) -> ChatRoom:
    """Alice's private room: alice is its owner and only member."""
    return services.chat_room_create(creator=alice, name="Alice's den", is_public=False)


@pytest.fixture
def post() -> Callable[..., Message]:
    """Store a message as `author` (joining public rooms first), with no broadcast."""

    def make(room: ChatRoom, author: User, text: str) -> Message:
        if room.is_public:
            services.chat_room_join(room=room, user=author)
        return services.chat_message_post(room=room, author=author, text=text)

    return make


# --- WebSocket clients through the full ASGI app (taskhub.asgi.application) ---------------

RECEIVE_TIMEOUT = 5


class Socket:
    """One browser tab's /ws connection, as a test drives it."""

    def __init__(self, communicator) -> None:
        self.communicator = communicator

    async def send(self, message: dict[str, Any]) -> None:
        await self.communicator.send_json_to(message)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        output = await self.communicator.receive_output(timeout)
        assert output["type"] == "websocket.send", f"expected a frame, got {output}"
        return json.loads(output["text"])

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a command and return the next frame (the reply, for a quiet socket)."""
        await self.send(message)
        return await self.receive()

    async def subscribe(self, room: str) -> dict[str, Any]:
        history = await self.request({"type": "subscribe.chat", "room": room, "ref": "sub"})
        assert history["type"] == "chat.history", history
        return history

    async def assert_nothing_more(self) -> None:
        """A ping round trip: a frame queued for this socket would arrive before the pong
        (the consumer handles one message at a time, in order)."""
        await self.send({"type": "ping", "ref": "sync"})
        frame = await self.receive()
        assert (frame["type"], frame.get("ref")) == ("pong", "sync"), f"unexpected {frame}"

    async def close(self) -> None:
        await self.communicator.disconnect()


@pytest.fixture(autouse=True)
def clean_connection_registry() -> None:
    """Open-connection counts of an earlier test must not count against this one."""
    redis = sync_redis()
    keys = list(redis.scan_iter("taskhub:ws:*"))
    if keys:
        redis.delete(*keys)


@pytest.fixture
async def open_socket(transactional_db) -> AsyncIterator[Callable[..., Any]]:
    """open_socket(user) -> a Socket past its welcome frame."""
    sockets: list[Socket] = []

    async def make(user: User) -> Socket:
        token = await sync_to_async(access_token_for)(user)
        communicator = WebsocketCommunicator(application, f"/ws?token={token}")
        connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT)
        assert connected
        socket = Socket(communicator)
        sockets.append(socket)
        assert (await socket.receive())["type"] == "welcome"
        return socket

    yield make
    for socket in sockets:
        await socket.close()
    # Redis pools belong to this test's event loop; the next test has another.
    await close_async_redis()
    await close_async_pool()
    # The pub/sub layer's connections and subscriptions of this test's loop.
    await get_channel_layer().flush()
    # database_sync_to_async's worker thread keeps its connection open; close it so the
    # test database can be flushed and dropped.
    await sync_to_async(connections.close_all)()


def access_token_for(user: User) -> str:
    return str(RefreshToken.for_user(user).access_token)


def subscribed_in_redis(room: ChatRoom) -> int:
    """How many connections Redis has subscribed to the room's group channel: the test
    process's layer is, while any of its sockets follows the room, and only then."""
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    channel = f"{config['prefix']}__group__{services.room_group(room.id)}"
    [(_, count)] = sync_redis().pubsub_numsub(channel)
    return count
