"""The connection registry's batch (services.connection_register_many, SocketHub.register):
sockets that connect together go to Redis in one pipeline, and each is still checked
against the per-user cap on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import override_settings

from devserver.testing import free_port
from notifications import consumers, selectors, services
from notifications.redis_client import close_async_redis, sync_redis
from taskhub import outages

ALICE, BOB = 910_001, 910_002


class Socket:
    """What SocketHub reads and writes of a consumer while it registers and renews it."""

    def __init__(self, user_id: int, channel_name: str) -> None:
        self.user: Any = type("User", (), {"pk": user_id})()
        self.channel_name = channel_name
        self._registered = False
        self._released = False
        self._closed = False
        self._groups: set[str] = set()
        self._groups_renewed_at = time.monotonic()


def registered(user_id: int) -> set[str]:
    members = sync_redis().zrange(selectors.user_connections_key(user_id), 0, -1)
    return {member.decode() for member in members}


@pytest.fixture(autouse=True)
async def _own_redis_client() -> AsyncIterator[None]:
    yield
    await close_async_redis()  # its pool belongs to this test's loop


async def test_a_batch_gives_the_last_slots_to_the_first_sockets_of_a_user():
    with override_settings(TASKHUB_WS_MAX_CONNECTIONS_PER_USER=2):
        answers = await services.connection_register_many(
            [(ALICE, "a.1"), (ALICE, "a.2"), (ALICE, "a.3"), (BOB, "b.1"), (ALICE, "a.1")]
        )
    # a.3 finds both slots taken by a.1 and a.2 of the same batch; a.1 again is a renewal.
    assert answers == [True, True, False, True, True]
    assert registered(ALICE) == {"a.1", "a.2"}
    assert registered(BOB) == {"b.1"}


async def test_sockets_connecting_together_go_in_one_batch_and_each_gets_its_answer(
    monkeypatch,
):
    batches: list[list[tuple[int, str]]] = []
    register_many = services.connection_register_many

    async def spy(entries: list[tuple[int, str]]) -> list[bool]:
        batches.append(entries)
        return await register_many(entries)

    monkeypatch.setattr(services, "connection_register_many", spy)
    hub = consumers.SocketHub()
    sockets = [Socket(ALICE, f"a.{n}") for n in range(4)] + [Socket(BOB, "b.1")]
    with override_settings(TASKHUB_WS_MAX_CONNECTIONS_PER_USER=3):
        answers = await asyncio.gather(*(hub.register(socket) for socket in sockets))

    assert answers == [True, True, True, False, True]
    assert [socket._registered for socket in sockets] == answers
    assert batches == [[(socket.user.pk, socket.channel_name) for socket in sockets]]


async def test_a_socket_that_ended_while_its_registration_was_in_flight_gives_the_slot_back():
    hub = consumers.SocketHub()
    gone, staying = Socket(ALICE, "a.gone"), Socket(ALICE, "a.staying")
    waiting = [hub.register(gone), hub.register(staying)]
    gone._released = True  # Daphne cancelled it: its own release had no registry entry yet
    assert await waiting[1] is True
    assert not waiting[0].done()  # nobody waits for the socket that went
    for _ in range(100):  # the hub releases it in its next batch of closed sockets
        if registered(ALICE) == {"a.staying"}:
            break
        await asyncio.sleep(0.01)
    assert registered(ALICE) == {"a.staying"}


async def test_when_redis_fails_every_socket_of_the_batch_gets_the_error():
    hub = consumers.SocketHub()
    # A port nothing listens on: this loop's client is made on first use, with this URL.
    with override_settings(TASKHUB_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        waiting = [hub.register(Socket(ALICE, "a.1")), hub.register(Socket(BOB, "b.1"))]
        results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(outages.is_redis_outage(result) for result in results), results


async def test_a_renewal_in_several_pipelines_renews_every_socket(monkeypatch):
    # The hub's periodic renewal goes out in small pipelines (services.REFRESH_BATCH), so
    # that no one turn of the event loop packs and parses thousands of commands.
    monkeypatch.setattr(services, "REFRESH_BATCH", 2)
    entries = [(ALICE, "a.1"), (ALICE, "a.2"), (ALICE, "a.3"), (BOB, "b.1"), (BOB, "b.2")]
    await services.connection_register_many(entries)
    redis = sync_redis()
    for user_id, channel in entries:  # as if registered a while ago
        redis.zadd(selectors.user_connections_key(user_id), {channel: 1.0}, xx=True)
        redis.zadd(selectors.CONNECTIONS_KEY, {channel: 1.0}, xx=True)
    before = time.time()

    await services.connection_refresh_many(entries)

    assert registered(ALICE) == {"a.1", "a.2", "a.3"}
    assert registered(BOB) == {"b.1", "b.2"}
    for key in (selectors.CONNECTIONS_KEY, *map(selectors.user_connections_key, (ALICE, BOB))):
        renewed_at = redis.zrange(key, 0, -1, withscores=True)
        assert renewed_at and min(score for _, score in renewed_at) >= before, key


async def test_a_socket_released_while_the_renewal_is_under_way_is_not_renewed(monkeypatch):
    # Renewing it after its release removed its entry would count a socket that is gone
    # against its user's cap until the entry went stale.
    monkeypatch.setattr(services, "REFRESH_BATCH", 1)
    hub = consumers.SocketHub()
    alice, bob = Socket(ALICE, "a.1"), Socket(BOB, "b.1")
    for socket in (alice, bob):
        socket._registered = True
        hub.sockets.add(socket)
    renewed: list[tuple[int, str]] = []

    async def renew_then_release_the_other(entries: list[tuple[int, str]]) -> None:
        renewed.extend(entries)
        other = bob if entries == [(ALICE, "a.1")] else alice
        other._registered = False  # as EventConsumer._release does, between two batches

    monkeypatch.setattr(services, "connection_refresh_many", renew_then_release_the_other)
    await hub._refresh()

    assert len(renewed) == 1
