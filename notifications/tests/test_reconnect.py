"""The channel layer loses Redis under live sockets and gets it back.

Redis pub/sub keeps nothing: whatever is published while a web process is not subscribed
is gone. What a user must see anyway: every persisted event, once, in order, and the chat
messages of the rooms they follow, soon after Redis is back, without reconnecting and
without waiting for the periodic sweep (disabled here).
"""

from __future__ import annotations

import asyncio
import copy

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.test import override_settings

from chat import services as chat_services
from notifications.tests.conftest import publish_event
from notifications.tests.test_push_path import own_redis  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def layer_on_own_redis(own_redis, settings):  # noqa: F811
    """The channel layer (only it) on a Redis this test stops and starts."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = own_redis.url
    settings.CHANNEL_LAYERS = layers
    return own_redis


@database_sync_to_async
def post_to(room, author, text: str) -> int:
    chat_services.chat_room_join(room=room, user=author)
    return chat_services.chat_message_post(room=room, author=author, text=text).id


async def test_after_redis_comes_back_sockets_get_what_was_published_meanwhile(
    layer_on_own_redis, alice, bob, general_room, connect
):
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0):  # no sweep: the resync alone
        tabs = [await connect(alice), await connect(alice)]
        bob_tab = await connect(bob)
        for tab in tabs:
            await tab.subscribe("general")
        before = await publish_event(alice, 1)
        for tab in tabs:
            assert [e["id"] for e in await tab.receive_events(1)] == [before]

        await sync_to_async(layer_on_own_redis.stop)()
        during = [await publish_event(alice, n) for n in (2, 3)]  # pushes fail
        message_id = await post_to(general_room, bob, "while Redis was down")  # so does this
        bob_event = await publish_event(bob, 9)
        # Each push is sent (and failed) at its commit, so all four are lost by now.
        await sync_to_async(layer_on_own_redis.start)()

        for tab in tabs:
            # Both arrive without the client asking: the events from the log, in order,
            # and the room's history again (no ref: the server sent it of its own accord).
            frames = [await tab.receive(timeout=15) for _ in range(3)]
            events = [f for f in frames if "id" in f]
            [history] = [f for f in frames if f["type"] == "chat.history"]
            assert [e["id"] for e in events] == during
            assert [e["data"]["n"] for e in events] == [2, 3]
            assert "ref" not in history
            assert history["data"]["room"] == "general"
            assert history["data"]["messages"][-1]["id"] == message_id
        # bob follows no room: his event only, no history.
        assert [e["id"] for e in await bob_tab.receive_events(1)] == [bob_event]

        # Subscribed again: the next push is live, and nothing came twice.
        after = await publish_event(alice, 4)
        for tab in tabs:
            assert [e["id"] for e in await tab.receive_events(1)] == [after]
            await tab.assert_nothing_more()
        await bob_tab.assert_nothing_more()


async def test_a_subscribe_whose_connection_was_torn_down_mid_send_is_sent_again():
    """The layer's receive loop reads without the shard's lock: when it meets a dead
    connection it tears it down, and a SUBSCRIBE being sent at that moment (a new socket's
    channel) found its writer None, an AttributeError: a 500 handshake during R3's Redis
    outages (issue 13). It is sent again on a new connection, once."""
    import uuid

    import redis.asyncio as aioredis
    from django.conf import settings

    from notifications.layers import _WatchedPubSub

    pool = aioredis.ConnectionPool.from_url(settings.TASKHUB_REDIS_URL)
    pubsub = _WatchedPubSub(pool, reconnected=lambda: None)
    try:
        await pubsub.subscribe(f"test-first-{uuid.uuid4().hex}")
        connection = pubsub.connection
        send = connection._send_packed_command
        torn = []

        async def torn_down_once(command):
            if not torn:  # what the receive loop's disconnect() leaves mid-send
                torn.append(True)
                connection._writer = None
            return await send(command)

        connection._send_packed_command = torn_down_once
        second = f"test-second-{uuid.uuid4().hex}"
        await pubsub.subscribe(second)
        assert torn and second.encode() in pubsub.channels
    finally:
        await pubsub.aclose()
        await pool.aclose()


async def test_a_subscribe_that_reconnects_while_the_receive_loop_reads_gets_its_channel():
    """After Redis came back, a new socket's SUBSCRIBE found the subscriber connection
    closed and reconnected it. redis-py marks a connection connected as soon as its socket
    is open, before the handshake's reply is read, so the layer's receive loop (which reads
    without the shard's lock) started reading on it too, and the handshake's read failed:
    "readuntil() called while another coroutine is already waiting". That socket got 4503
    (CI, test_hardening's connect after Redis came back). The handshake and the receive
    loop take turns; the socket gets its channel and its messages."""
    import uuid

    import redis.asyncio as aioredis
    from django.conf import settings

    from notifications.layers import _WatchedPubSub

    pool = aioredis.ConnectionPool.from_url(settings.TASKHUB_REDIS_URL)
    publisher = aioredis.Redis(connection_pool=pool)
    pubsub = _WatchedPubSub(pool, reconnected=lambda: None)
    try:
        await pubsub.subscribe(f"test-first-{uuid.uuid4().hex}")
        connection = pubsub.connection
        await connection.disconnect()  # what Redis' restart left behind
        handshake = connection.on_connect_check_health

        async def slow_handshake(*args, **kwargs):
            await asyncio.sleep(0.1)  # the socket is open, its reply not read yet
            return await handshake(*args, **kwargs)

        connection.on_connect_check_health = slow_handshake

        async def receive_loop_once():
            while not connection.is_connected:
                await asyncio.sleep(0.001)
            return await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)

        second = f"test-second-{uuid.uuid4().hex}"
        await asyncio.gather(pubsub.subscribe(second), receive_loop_once())

        assert second.encode() in pubsub.channels
        await publisher.publish(second, b"hello")
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                break
        assert message is not None and message["data"] == b"hello"
    finally:
        await pubsub.aclose()
        await pool.aclose()
