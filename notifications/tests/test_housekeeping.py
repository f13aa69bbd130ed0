"""What a socket leaves behind and what the per-process housekeeping does for it: no
leftovers however a socket ends, lost pushes found by one sweep for all sockets, and a
deactivated account shut out within a known time."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import override_settings

from conftest import access_token_for, subscribed_in_redis
from devserver.wsclient import eventually, open_in_process
from notifications import middleware, protocol, selectors
from notifications.consumers import SocketHub, socket_hub
from notifications.tests.conftest import publish_event, write_event_without_push
from taskhub import gc_policy

pytestmark = pytest.mark.django_db(transaction=True)


def user_subscribed(user: User) -> int:
    return subscribed_in_redis(protocol.user_group(user.pk))


async def make_users(count: int) -> list[User]:
    return await sync_to_async(
        lambda: [User.objects.create_user(username=f"member{n}") for n in range(count)]
    )()


async def deactivate_unannounced(user: User) -> None:
    """is_active=False written without the save signal that closes the user's sockets at
    once (taskhub/accounts.py): a change made around the app (SQL, a restore, a lost push),
    which only the sweep or the auth cache's expiry can notice."""
    await sync_to_async(User.objects.filter(pk=user.pk).update)(is_active=False)


@pytest.fixture
def sweeps(monkeypatch) -> list[None]:
    """One entry per sweep the hub starts (its one query: selectors.ausers_state)."""
    started: list[None] = []
    read_state = selectors.ausers_state

    async def counted(**kwargs):
        started.append(None)
        return await read_state(**kwargs)

    monkeypatch.setattr(selectors, "ausers_state", counted)
    return started


# --- Nothing left behind -----------------------------------------------------------------


async def test_after_300_sockets_close_at_once_registry_and_groups_are_empty(connect):
    users = await make_users(30)
    sockets = await asyncio.gather(*(connect(users[n % 30]) for n in range(300)))
    assert await sync_to_async(selectors.active_connection_count)() == 300

    await asyncio.gather(*(socket.close() for socket in sockets))

    assert await sync_to_async(selectors.active_connection_count)() == 0
    for user in users:
        await eventually(lambda u=user: user_subscribed(u) == 0, message="the group to go")
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
    client = await open_in_process(token=token)  # not the fixture's: it is never closed
    await client.receive_type("welcome")
    other = await connect(alice)
    client.communicator.future.cancel()

    await eventually(
        lambda: selectors.user_connection_count(user_id=alice.pk) == 1,
        message="the cancelled socket's registry entry",
    )
    event_id = await publish_event(alice)
    assert (await other.receive_type("task.updated"))["id"] == event_id
    # Once the other socket closes too, nothing of alice's is subscribed: the cancelled
    # socket left her group although its disconnect() never ran.
    await other.close()
    await eventually(lambda: user_subscribed(alice) == 0, message="alice's group to go")


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


async def test_an_event_pushed_normally_is_not_sent_again_by_the_sweep(alice, connect, sweeps):
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0.2):
        client = await connect(alice)
        event_id = await publish_event(alice)
        assert (await client.receive_events(1))[0]["id"] == event_id
        # Three whole sweeps after the delivery (a fourth has begun): none may repeat it.
        seen = len(sweeps)
        await eventually(lambda: len(sweeps) >= seen + 4, message="three sweeps")
        await client.assert_nothing_more()


# --- Deactivated accounts ------------------------------------------------------------------


async def test_a_deactivated_users_open_socket_is_closed_with_4401_by_the_sweep(
    alice, bob, connect
):
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0.3):
        client = await connect(alice)
        bystander = await connect(bob)
        await deactivate_unannounced(alice)
        code, frames = await client.receive_close()
    assert code == 4401
    assert frames[-1]["data"]["code"] == "unauthenticated"
    await bystander.assert_nothing_more()


async def test_a_deactivated_users_token_is_let_in_only_until_the_auth_cache_expires(
    alice, connect, fake_clock
):
    """WS_AUTH_CACHE_SECONDS bounds how long a deactivated user can still connect to a
    process that looked them up: on a clock the test moves, in just before it ends, out
    just after."""
    clock = fake_clock(middleware)
    with override_settings(TASKHUB_WS_AUTH_CACHE_SECONDS=30, TASKHUB_WS_CATCHUP_INTERVAL=0):
        await connect(alice)  # her lookup is cached now
        await deactivate_unannounced(alice)
        clock.advance(29.9)
        still_cached = await connect(alice)
        assert still_cached.welcome["data"]["user"]["id"] == alice.pk
        clock.advance(0.2)
        refused = await connect(alice, welcome=False)
        first = await refused.receive()
        assert (first["type"], first["data"].get("code")) == ("error", "unauthenticated")
        code, frames = await refused.receive_close()
    assert (code, frames) == (4401, [])


# --- The garbage collector -----------------------------------------------------------------


@pytest.fixture
def collector(monkeypatch, settings) -> Iterator[gc_policy.SocketCollector]:
    """The process's collector schedule (taskhub/gc_policy.py) from one socket on, with a
    short grace; nothing frozen before or after the test."""
    settings.TASKHUB_WS_GC_FREEZE = True
    settings.TASKHUB_WS_GC_FREEZE_MIN_SOCKETS = 1
    fresh = gc_policy.SocketCollector(grace=0.2)
    monkeypatch.setattr(gc_policy, "sockets", fresh)
    gc.unfreeze()
    yield fresh
    gc.unfreeze()


async def test_open_sockets_are_frozen_and_the_last_close_brings_one_full_pass(
    alice, connect, collector
):
    """The hub ticks the collector while sockets are open (so the collector's own passes
    never scan them), and after the last one closed, its two last ticks make the full pass
    due and run it (the hub's task has ended by then)."""
    socket = await connect(alice)
    [consumer] = socket_hub().sockets
    await eventually(
        lambda: not any(tracked is consumer for tracked in gc.get_objects()),
        message="the consumer to be frozen",
    )
    assert collector.full_passes == 0

    await socket.close()

    await eventually(lambda: collector.full_passes == 1, message="one full pass")
    assert collector.closed_since_full_pass == 0


class IdleSocket:
    """What the hub reads of a consumer to close it for idleness, and nothing else: the
    hub drops it from its set itself, and its release() never comes."""

    def __init__(self) -> None:
        self._closed = False
        self._last_seen = 0.0  # long ago
        self._idle_timeout = 0.01
        self.closed_idle = asyncio.Event()

    async def _close_idle(self) -> None:
        self.closed_idle.set()


async def test_a_hub_left_with_no_socket_by_its_own_closes_looks_after_the_next(settings):
    """Sockets the hub itself drops (idle, deactivated) can leave it with none before
    their release() arrives: its task ends, and the next socket must start a new one, or
    nothing would ever close that socket when idle."""
    settings.TASKHUB_WS_IDLE_TIMEOUT = 1.0  # the hub ticks every 0.25 s
    hub = SocketHub()
    first = IdleSocket()
    hub.add(first)
    await asyncio.wait_for(first.closed_idle.wait(), 5)
    await eventually(lambda: hub._task is None or hub._task.done(), message="the task to end")

    second = IdleSocket()
    hub.add(second)

    await asyncio.wait_for(second.closed_idle.wait(), 5)
