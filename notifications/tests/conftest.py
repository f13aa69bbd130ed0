"""WebSocket test helpers: a client through the full ASGI app on the real Redis layer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections, transaction

from conftest import access_token_for
from notifications import selectors, services
from notifications.models import Event
from notifications.redis_client import close_async_redis, sync_redis
from notifications.selectors import close_async_pool
from taskhub.asgi import application

RECEIVE_TIMEOUT = 5


class Client:
    """A WebSocket client of /ws: sends JSON, receives frames, expects closes."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.subprotocol: str | None = None

    async def send(self, message: dict[str, Any] | str) -> None:
        if isinstance(message, str):
            await self.communicator.send_to(text_data=message)
        else:
            await self.communicator.send_json_to(message)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        output = await self.communicator.receive_output(timeout)
        assert output["type"] == "websocket.send", f"expected a frame, got {output}"
        return json.loads(output["text"])

    async def receive_type(self, type: str, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        frame = await self.receive(timeout)
        assert frame["type"] == type, f"expected {type}, got {frame}"
        return frame

    async def receive_close(self, timeout: float = RECEIVE_TIMEOUT) -> tuple[int, list[dict]]:
        """Frames until the server closes; returns the close code and those frames."""
        frames = []
        while True:
            output = await self.communicator.receive_output(timeout)
            if output["type"] == "websocket.close":
                return output.get("code"), frames
            frames.append(json.loads(output["text"]))

    async def receive_events(self, count: int) -> list[dict[str, Any]]:
        """The next `count` persisted events (frames with an id), skipping ephemeral ones."""
        events: list[dict[str, Any]] = []
        while len(events) < count:
            frame = await self.receive()
            if "id" in frame:
                events.append(frame)
        return events

    async def assert_nothing_more(self) -> None:
        """A ping round trip: anything queued before the pong would arrive first."""
        await self.send({"type": "ping", "ref": "sync"})
        frame = await self.receive()
        assert frame == {**frame, "type": "pong", "ref": "sync"}, f"unexpected frame {frame}"

    async def close(self) -> None:
        await self.communicator.disconnect()


async def open_socket(
    *,
    token: str | None = None,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> Client:
    params = [p for p in (f"token={token}" if token else "", query) if p]
    path = "/ws" + ("?" + "&".join(params) if params else "")
    communicator = WebsocketCommunicator(
        application, path, headers=headers or [], subprotocols=subprotocols
    )
    connected, subprotocol = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    assert connected
    client = Client(communicator)
    client.subprotocol = subprotocol
    return client


@pytest.fixture
async def connect(transactional_db) -> AsyncIterator[Callable[..., Any]]:
    """connect(user, query=...) -> a Client that has received its welcome frame."""
    clients: list[Client] = []

    async def make(user: Any, *, query: str = "", welcome: bool = True) -> Client:
        token = await sync_to_async(access_token_for)(user)
        client = await open_socket(token=token, query=query)
        clients.append(client)
        if welcome:
            client.welcome = await client.receive_type("welcome")
        return client

    yield make
    for client in clients:
        await client.close()
    await close_async_redis()
    await close_async_pool()
    # The pub/sub layer's connections and subscriptions of this test's loop.
    await get_channel_layer().flush()
    # database_sync_to_async's worker thread keeps its connection open; close it so the
    # test database can be flushed and dropped.
    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def clean_redis_registry() -> None:
    """Connection counts from an earlier test must not count against this one."""
    redis = sync_redis()
    keys = list(redis.scan_iter("taskhub:ws:*"))
    if keys:
        redis.delete(*keys)


@database_sync_to_async
def publish_event(user: Any, n: int = 0, task_id: Any = None) -> int:
    """Publish one persisted event for `user` (pushed after commit); returns its id."""
    with transaction.atomic():
        event = services.publish(
            user_id=user.pk, type="task.updated", data={"n": n}, task_id=task_id
        )
    return event.seq


@database_sync_to_async
def publish_event_data(user: Any, data: dict[str, Any]) -> int:
    with transaction.atomic():
        return services.publish(user_id=user.pk, type="task.updated", data=data).seq


@database_sync_to_async
def write_event_without_push(user: Any, n: int = 0) -> int:
    """An event in the log whose push is lost (as with a Redis blip after commit)."""
    with transaction.atomic():
        event = Event.objects.create(
            user_id=user.pk,
            seq=services.next_event_seq(user_id=user.pk),
            type="task.updated",
            data={"n": n},
        )
    return event.seq


@database_sync_to_async
def newest_event_id(user: Any) -> int:
    return selectors.newest_event_id(user_id=user.pk)
