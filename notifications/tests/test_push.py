"""Pushing from sync code (Celery workers) and many sockets at once."""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import warnings
from urllib.parse import urlsplit

import psutil
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from devserver.testing import free_port
from notifications import protocol, services
from notifications.models import Event
from notifications.tests.conftest import publish_event

pytestmark = pytest.mark.django_db(transaction=True)


def redis_ports() -> set[int]:
    """The ports of the Redis servers the pushes go to: the channel layer's hosts (the
    push path writes to them) and REDIS_URL."""
    urls = [settings.TASKHUB_REDIS_URL]
    urls += [host["address"] for host in settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]]
    return {urlsplit(url).port or 6379 for url in urls}


def redis_sockets_of_this_process() -> int:
    ports = redis_ports()
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port in ports and conn.status == psutil.CONN_ESTABLISHED
    )


def test_many_pushes_from_sync_code_leak_no_connections_and_log_no_loop_errors(caplog):
    """The worker's path: async_to_sync(group_send) per push, each on a fresh event loop."""
    caplog.set_level(logging.DEBUG)
    frame = protocol.envelope("task.progress", {"task_id": "t", "progress": 1})
    services.push_to_user_rollback_unsafe(user_id=1, frame=frame)  # the first opens pools
    before = redis_sockets_of_this_process()
    # The count sees Redis connections at all (the push path's own client is one), so the
    # check below can fail: a connection opened per push would raise it.
    assert before >= 1, f"no connection to Redis on ports {redis_ports()} seen"
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
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = f"redis://127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = layers
    with transaction.atomic():
        user = _user()
        event = services.publish(user_id=user.pk, type="task.updated", data={})
    # The push failed after commit; the event is in the log all the same.
    assert list(Event.objects.filter(user=user).values_list("seq", flat=True)) == [event.seq]
    assert f"push to user {user.pk} failed" in caplog.text


def _user() -> User:
    return User.objects.create_user(username="someone")
