"""Pushing from sync code (Celery workers) and many sockets at once."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import psutil
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import transaction

from notifications import protocol, services
from notifications.tests.conftest import publish_event
from taskhub.env import env_str

pytestmark = pytest.mark.django_db(transaction=True)


def redis_sockets_of_this_process() -> int:
    port = int(env_str("REDIS_PORT", "6379"))
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


def test_many_pushes_from_sync_code_leak_no_connections_and_log_no_loop_errors(caplog):
    """The worker's path: async_to_sync(group_send) per push, each on a fresh event loop."""
    caplog.set_level(logging.DEBUG)
    frame = protocol.envelope("task.progress", {"task_id": "t", "progress": 1})
    services.push_to_user_rollback_unsafe(user_id=1, frame=frame)  # the first opens pools
    before = redis_sockets_of_this_process()
    gc.collect()  # garbage of earlier tests must not be blamed on the pushes below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(300):
            services.push_to_user_rollback_unsafe(user_id=1, frame=frame)
        gc.collect()
    assert redis_sockets_of_this_process() <= before
    assert "Event loop is closed" not in caplog.text
    assert "push to user" not in caplog.text  # no push failed
    assert not [w for w in caught if "Event loop is closed" in str(w.message)]
    assert not [
        w for w in caught if issubclass(w.category, ResourceWarning) and "socket" in str(w.message)
    ], "a Redis connection was left to the garbage collector"


async def test_200_sockets_of_50_users_each_receive_exactly_their_own_events(connect):
    users = await sync_to_async(
        lambda: [User.objects.create_user(username=f"user{n}") for n in range(50)]
    )()
    sockets = await asyncio.gather(*(connect(users[n % 50]) for n in range(200)))
    published = {}
    for user in users:
        published[user.pk] = [await publish_event(user, n) for n in range(2)]

    async def check(n: int, client) -> None:
        user = users[n % 50]
        events = await client.receive_events(2)
        assert [e["id"] for e in events] == published[user.pk]
        await client.assert_nothing_more()

    await asyncio.gather(*(check(n, client) for n, client in enumerate(sockets)))


def test_a_push_that_fails_is_logged_and_swallowed(caplog, settings):
    import copy

    from devserver.testing import free_port

    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = f"redis://127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = layers
    with transaction.atomic():
        user = _user()
        event = services.publish(user_id=user.pk, type="task.updated", data={})
    assert event.pk is not None
    assert f"push to user {user.pk} failed" in caplog.text


def _user() -> User:
    return User.objects.create_user(username="someone")
