"""Personas, the real-process fixtures and the small helpers shared by every app's tests.

WebSockets: `connect` opens sockets through the ASGI app in the test's process; the client
itself (`Socket`, also over TCP to a real Daphne: `open_network`) is devserver/wsclient.py.
"""

from __future__ import annotations

import os

# Before any test imports grpc: tests call gRPC from threads while they start servers, and
# grpc's fork handlers can abort such a child before it execs (reliability/run.py says more).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from chat.models import ChatRoom
from devserver import testing
from devserver.wsclient import Socket, open_in_process
from notifications.models import Event
from notifications.redis_client import close_async_redis, sync_redis
from notifications.selectors import close_async_pool
from taskhub import gc_policy, outages
from taskhub.celery import app as celery_app
from tasks.models import Task
from tasks.nudge import clear_nudges


@pytest.fixture(autouse=True)
def no_outage_carried_over() -> None:
    """Each process logs one line per outage (taskhub/outages.py): an outage an earlier test
    left open would keep this test's first failure from being logged."""
    outages.REDIS.forget()
    outages.DATABASE.forget()


@pytest.fixture(autouse=True)
def fresh_gc_schedule(monkeypatch) -> None:
    """The collector's schedule (taskhub/gc_policy.py) is one per process: each test starts
    from a fresh one, so closes counted or a pass made due in one test never act in the
    next."""
    monkeypatch.setattr(gc_policy, "sockets", gc_policy.SocketCollector())


@pytest.fixture
def alice(django_user_model) -> User:
    return django_user_model.objects.create_user(username="alice", password="alice-pass-123")


@pytest.fixture
def bob(django_user_model) -> User:
    return django_user_model.objects.create_user(username="bob", password="bob-pass-123")


def access_token_for(user: User) -> str:
    return str(RefreshToken.for_user(user).access_token)


@pytest.fixture
def operator(django_user_model) -> Client:
    """A superuser signed in to the admin."""
    django_user_model.objects.create_superuser("operator", "op@example.com", "operator-pass-1")
    client = Client()
    client.login(username="operator", password="operator-pass-1")
    return client


@pytest.fixture
def client_for() -> Callable[[User | None], APIClient]:
    """An API client that authenticates as `user` with a real JWT (None: anonymous)."""

    def make(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(user)}")
        return client

    return make


@pytest.fixture
def stubborn_kind(settings) -> None:
    """The `stubborn` kind (tasks/tests/processors.py) registered in this process, so the
    test can create such tasks; a worker process needs it in its own environment too
    (TASK_PROCESSORS)."""
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "stubborn": "tasks.tests.processors.stubborn",
    }


def drop_pending_messages() -> None:
    """Drop the messages waiting in the broker (run, dispatch) and the nudge flag one of
    them may have left set (it would hold back the next nudge)."""
    celery_app.control.purge()
    clear_nudges()


@pytest.fixture
def purge_broker() -> None:
    """Nothing left over from an earlier test: a new worker starts clean."""
    drop_pending_messages()


@pytest.fixture
def celery_worker_process(transactional_db, purge_broker) -> Iterator[testing.ManagedProcess]:
    """A real `celery -A taskhub worker` on the test database."""
    worker = testing.start_worker()
    yield worker
    worker.stop()


@pytest.fixture
def daphne_server(transactional_db) -> Iterator[str]:
    """A real Daphne serving taskhub.asgi on a free port; yields its base URL."""
    web, base_url = testing.start_daphne()
    yield base_url
    web.stop()


@pytest.fixture
def general_room(db) -> ChatRoom:
    """The room the chat data migration creates; a transactional test before this one
    flushed the tables (the migration's row with them), so make sure it is there."""
    room, _ = ChatRoom.objects.get_or_create(
        slug="general", defaults={"name": "General", "is_public": True}
    )
    return room


def clear_connection_registry() -> None:
    """Forget every open-socket entry in Redis (notifications' connection registry)."""
    redis = sync_redis()
    keys = list(redis.scan_iter("taskhub:ws:*"))
    if keys:
        redis.delete(*keys)


@pytest.fixture
def clean_connection_registry() -> None:
    """Open-socket counts left in Redis by an earlier test (or its killed server) must not
    count against this one: neither the per-user limit nor the connections gauge."""
    clear_connection_registry()


def subscribed_in_redis(group: str) -> int:
    """How many connections Redis has subscribed to a Channels group's channel: a process's
    pub/sub layer is while any socket of it is in the group, and only then (a socket left
    in a group would keep it, and its pushes, forever)."""
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    [(_, count)] = sync_redis().pubsub_numsub(f"{config['prefix']}__group__{group}")
    return count


@pytest.fixture
async def connect(
    transactional_db, clean_connection_registry
) -> AsyncIterator[Callable[..., Awaitable[Socket]]]:
    """connect(user, query=..., welcome=True) -> a devserver.wsclient.Socket through the
    ASGI app in this process on the real Redis layer, past its welcome frame (kept in
    `socket.welcome`). Every socket is closed after the test, with the Redis pools and the
    database connection the test's event loop used."""
    sockets: list[Socket] = []

    async def make(user: User, *, query: str = "", welcome: bool = True) -> Socket:
        token = await sync_to_async(access_token_for)(user)
        socket = await open_in_process(token=token, query=query)
        sockets.append(socket)
        if welcome:
            socket.welcome = await socket.receive_type("welcome")
        return socket

    yield make
    for socket in sockets:
        await socket.close()
    # Redis pools belong to this test's event loop; the next test has another.
    await close_async_redis()
    await close_async_pool()
    # The pub/sub layer's connections and subscriptions of this test's loop.
    await get_channel_layer().flush()
    # database_sync_to_async's thread keeps its connection open; close it so the test
    # database can be flushed and dropped.
    await sync_to_async(connections.close_all)()


class GroupListener:
    """A channel on the configured channel layer, in the given groups, as a socket of a
    Daphne process is, without a socket in between (so no gap repair of the consumer can
    hide a lost push). Its calls run on one event loop of its own: the layer's
    subscriptions and receive buffers belong to the loop that made them."""

    def __init__(self, *groups: str) -> None:
        import asyncio

        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()
        self.groups = groups
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        for group in groups:
            self.loop.run_until_complete(self.layer.group_add(group, self.channel))
        self._sentinels = 0

    def receive(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next message sent to the channel, or None after `timeout` seconds."""
        import asyncio

        async def receive() -> dict[str, Any] | None:
            try:
                return await asyncio.wait_for(self.layer.receive(self.channel), timeout)
            except TimeoutError:
                return None

        return self.loop.run_until_complete(receive())

    def frames(
        self, count: int, timeout: float = 10, *, persisted_only: bool = False
    ) -> list[dict[str, Any]]:
        """Pushed frames until `count` arrived (of persisted events only, if asked) or
        `timeout` s passed (fewer then: the caller's comparison fails)."""
        import time

        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            message = self.receive(timeout=max(deadline - time.monotonic(), 0.01))
            if message is None:
                continue
            assert message["type"] == "event.push", message  # the consumer's handler
            if "id" in message["frame"] or not persisted_only:
                frames.append(message["frame"])
        return frames

    def assert_nothing_more(self) -> None:
        """Nothing was pushed to the groups before now that has not been received: a
        sentinel sent now through the layer arrives after anything published before it
        (one Redis orders the publishes, and pushes are published when they are sent)."""
        self._sentinels += 1
        sentinel = {"type": "test.sentinel", "n": self._sentinels}
        self.loop.run_until_complete(self.layer.group_send(self.groups[0], sentinel))
        message = self.receive()
        assert message == sentinel, f"unexpected {message}"

    def close(self) -> None:
        for group in self.groups:
            self.loop.run_until_complete(self.layer.group_discard(group, self.channel))
        self.loop.close()  # the layer closes this loop's connections with it


@pytest.fixture
def listen() -> Iterator[Callable[..., GroupListener]]:
    """listen(*groups) -> a GroupListener, closed after the test."""
    listeners: list[GroupListener] = []

    def make(*groups: str) -> GroupListener:
        listeners.append(GroupListener(*groups))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.close()


class FakeClock:
    """A `time` module whose monotonic() moves only when the test says (`advance`); the
    rest is the real module's. Patched into one module, it drives that module's timers
    (rate limits, idle timeouts, cache expiry) without sleeping."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


@pytest.fixture
def fake_clock(monkeypatch) -> Callable[[Any], FakeClock]:
    """fake_clock(module) -> a FakeClock standing in for `module.time` during the test."""

    def install(module: Any) -> FakeClock:
        clock = FakeClock()
        monkeypatch.setattr(module, "time", clock)
        return clock

    return install


# --- A task as a user follows it -----------------------------------------------------------


def status_of(task: Task) -> str:
    task.refresh_from_db()
    return task.status


def wait_for_status(task: Task, status: str, timeout: float = 30) -> Task:
    """Wait (at most `timeout` s: a bound on the wait, not a speed claim) for `status`."""
    testing.wait_until(lambda: status_of(task) == status, timeout=timeout, message=f"task {status}")
    return task


def wait_until_finished(task: Task, timeout: float = 30) -> Task:
    """Wait for any terminal status; `task` is refreshed."""

    def finished() -> bool:
        task.refresh_from_db()
        return task.is_terminal

    testing.wait_until(finished, timeout=timeout, message=f"{task.title!r} to finish")
    return task


def statuses_seen(task: Task) -> list[str]:
    """The statuses the task's events announced, in order."""
    return [event.data["status"] for event in Event.objects.filter(task_id=task.pk).order_by("seq")]
