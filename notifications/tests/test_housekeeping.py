"""What a socket leaves behind and what the per-process housekeeping does for it: no
leftovers however a socket ends, lost pushes found by one sweep for all sockets, and a
deactivated account shut out within a known time."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings

from conftest import access_token_for
from notifications import protocol, selectors
from notifications.redis_client import sync_redis
from notifications.tests.conftest import open_socket, publish_event, write_event_without_push

pytestmark = pytest.mark.django_db(transaction=True)


def subscribed_in_redis(user: User) -> int:
    """How many connections Redis has subscribed to the user's group channel: this
    process's layer stays subscribed while any socket of its is in the group, and only
    then (a socket left in the group would keep it, and its pushes, forever)."""
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    channel = f"{config['prefix']}__group__{protocol.user_group(user.pk)}"
    [(_, count)] = sync_redis().pubsub_numsub(channel)
    return count


async def make_users(count: int) -> list[User]:
    return await sync_to_async(
        lambda: [User.objects.create_user(username=f"member{n}") for n in range(count)]
    )()


async def deactivate(user: User) -> None:
    user.is_active = False
    await sync_to_async(user.save)(update_fields=["is_active"])


async def wait_for(predicate, *, timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await sync_to_async(predicate)():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.05)


# --- Nothing left behind -----------------------------------------------------------------


async def test_after_300_sockets_close_at_once_registry_and_groups_are_empty(connect):
    users = await make_users(30)
    sockets = await asyncio.gather(*(connect(users[n % 30]) for n in range(300)))
    assert await sync_to_async(selectors.active_connection_count)() == 300

    await asyncio.gather(*(socket.close() for socket in sockets))

    assert await sync_to_async(selectors.active_connection_count)() == 0
    for user in users:
        await wait_for(lambda u=user: subscribed_in_redis(u) == 0, message="the group to go")
        assert await sync_to_async(selectors.user_connection_count)(user_id=user.pk) == 0
    # ...and the process serves the next sockets as it did the first.
    again = await asyncio.gather(*(connect(user) for user in users))
    event_id = await publish_event(users[7])
    assert (await again[7].receive_type("task.updated"))["id"] == event_id
    await again[8].assert_nothing_more()


async def test_a_socket_cancelled_without_disconnect_still_leaves_nothing_behind(alice, connect):
    """Daphne cancels an application that outlives its close timeout; disconnect() never
    runs then. Its group membership and registry entry must still go."""
    token = await sync_to_async(access_token_for)(alice)
    client = await open_socket(token=token)  # not the fixture's: it is never closed
    await client.receive_type("welcome")
    other = await connect(alice)
    client.communicator.future.cancel()

    await wait_for(
        lambda: selectors.user_connection_count(user_id=alice.pk) == 1,
        message="the cancelled socket's registry entry",
    )
    event_id = await publish_event(alice)
    assert (await other.receive_type("task.updated"))["id"] == event_id
    # Once the other socket closes too, nothing of alice's is subscribed: the cancelled
    # socket left her group although its disconnect() never ran.
    await other.close()
    await wait_for(lambda: subscribed_in_redis(alice) == 0, message="alice's group to go")


# --- The sweep -----------------------------------------------------------------------------


async def test_lost_pushes_of_many_sockets_are_delivered_by_the_sweep(connect):
    """No socket has a timer of its own: one sweep query finds every socket behind."""
    users = await make_users(20)
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0.3):
        sockets = await asyncio.gather(*(connect(users[n % 20]) for n in range(100)))
        lost = {user.pk: await write_event_without_push(user) for user in users}
        for n, socket in enumerate(sockets):
            [event] = await socket.receive_events(1)
            assert event["id"] == lost[users[n % 20].pk]
    for socket in sockets:
        await socket.assert_nothing_more()


async def test_an_event_pushed_normally_is_not_sent_again_by_the_sweep(alice, connect):
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0.2):
        client = await connect(alice)
        event_id = await publish_event(alice)
        assert (await client.receive_events(1))[0]["id"] == event_id
        await asyncio.sleep(0.6)  # three sweeps: none may repeat the event
        await client.assert_nothing_more()


# --- Deactivated accounts ------------------------------------------------------------------


async def test_a_deactivated_users_open_socket_is_closed_with_4401_by_the_sweep(alice, connect):
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0.3):
        client = await connect(alice)
        await deactivate(alice)
        code, frames = await client.receive_close(timeout=5)
    assert code == 4401
    assert frames[-1]["data"]["code"] == "unauthenticated"


async def test_a_deactivated_users_token_is_refused_within_the_auth_cache_time(alice, connect):
    bound = 1.0
    with override_settings(TASKHUB_WS_AUTH_CACHE_SECONDS=bound, TASKHUB_WS_CATCHUP_INTERVAL=0):
        await connect(alice)  # her lookup is now cached
        token = await sync_to_async(access_token_for)(alice)
        await deactivate(alice)
        deactivated_at = time.monotonic()
        while True:
            client = await open_socket(token=token)
            frame = await client.receive()
            if frame["type"] == "error":
                break
            assert frame["type"] == "welcome"
            assert time.monotonic() - deactivated_at <= bound, "still let in past the bound"
            await client.close()
            await asyncio.sleep(0.1)
        code, _ = await client.receive_close()
    assert code == 4401
    assert frame["data"]["code"] == "unauthenticated"
    assert time.monotonic() - deactivated_at <= bound + 1.0
