"""Resume: after a drop a client gets every persisted event it missed, in order, none
twice, then live ones — also when pushes were lost on the way."""

from __future__ import annotations

import asyncio
import copy
import threading
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from devserver.testing import free_port
from notifications.models import Event
from notifications.tests.conftest import (
    newest_event_id,
    publish_event,
    write_event_without_push,
)

pytestmark = pytest.mark.django_db(transaction=True)


def dead_channel_layers() -> dict:
    """CHANNEL_LAYERS pointing at a port where no Redis listens."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = f"redis://127.0.0.1:{free_port()}/0"
    return layers


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live(
    alice, connect
):
    first = await connect(alice)
    await publish_event(alice, 1)
    seen = [e["id"] for e in await first.receive_events(1)]
    await first.close()
    missed = [await publish_event(alice, n) for n in range(2, 5)]

    again = await connect(alice, query=f"last_event_id={seen[-1]}")
    assert again.welcome["data"]["last_event_id"] == missed[-1]
    replayed = await again.receive_events(3)
    assert [e["id"] for e in replayed] == missed
    assert [e["data"]["n"] for e in replayed] == [2, 3, 4]
    live = await publish_event(alice, 5)
    assert (await again.receive_events(1))[0]["id"] == live
    await again.assert_nothing_more()


async def test_resume_message_replays_mid_connection_with_the_ref(alice, connect):
    client = await connect(alice)
    ids = [await publish_event(alice, n) for n in range(3)]
    assert [e["id"] for e in await client.receive_events(3)] == ids
    await client.send({"type": "resume", "last_event_id": ids[0], "ref": "again"})
    assert [e["id"] for e in await client.receive_events(2)] == ids[1:]
    await client.assert_nothing_more()


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
async def test_a_bad_last_event_id_in_the_url_gets_a_bad_request_error(alice, connect, value):
    client = await connect(alice, query=f"last_event_id={value}")
    error = await client.receive_type("error")
    assert error["data"]["code"] == "bad_request"
    await client.assert_nothing_more()


@pytest.mark.parametrize("value", [-1, "3", None, True, 1.5])
async def test_a_bad_resume_gets_a_bad_request_error_with_the_ref(alice, connect, value):
    client = await connect(alice)
    await client.send({"type": "resume", "last_event_id": value, "ref": 9})
    error = await client.receive_type("error")
    assert (error["data"]["code"], error["ref"]) == ("bad_request", 9)


async def test_a_last_event_id_beyond_the_newest_still_gets_later_events(alice, connect):
    await publish_event(alice)
    client = await connect(alice, query="last_event_id=999")
    await client.assert_nothing_more()
    event_id = await publish_event(alice)
    assert (await client.receive_events(1))[0]["id"] == event_id == 2


async def test_resuming_from_before_retention_says_events_were_pruned(alice, connect):
    for n in range(3):
        await publish_event(alice, n)
    await sync_to_async(Event.objects.filter(user=alice, seq=1).delete)()
    client = await connect(alice, query="last_event_id=0")
    error = await client.receive_type("error")
    assert error["data"]["code"] == "events_pruned"
    assert [e["id"] for e in await client.receive_events(2)] == [2, 3]


async def test_events_published_while_redis_is_unreachable_are_delivered_on_resume(
    alice, connect, caplog
):
    client = await connect(alice)
    last_seen = client.welcome["data"]["last_event_id"]
    await client.close()
    with override_settings(CHANNEL_LAYERS=dead_channel_layers()):
        published = [await publish_event(alice, n) for n in range(3)]
    assert f"push to user {alice.pk} failed" in caplog.text  # the pushes really failed

    again = await connect(alice, query=f"last_event_id={last_seen}")
    assert [e["id"] for e in await again.receive_events(3)] == published
    await again.assert_nothing_more()


async def test_a_lost_push_is_filled_in_when_the_next_event_shows_the_gap(alice, connect):
    client = await connect(alice)
    first = await publish_event(alice, 1)
    lost = [await write_event_without_push(alice, n) for n in (2, 3)]
    last = await publish_event(alice, 4)
    events = await client.receive_events(4)
    assert [e["id"] for e in events] == [first, *lost, last]
    assert [e["data"]["n"] for e in events] == [1, 2, 3, 4]
    await client.assert_nothing_more()


async def test_a_lost_last_push_is_delivered_by_the_periodic_catch_up(alice, connect):
    with override_settings(TASKHUB_WS_CATCHUP_INTERVAL=0.3):
        client = await connect(alice)
        lost = await write_event_without_push(alice, 1)
        [event] = await client.receive_events(1)
    assert event["id"] == lost


async def test_events_committed_during_a_replay_arrive_once_and_in_order(alice, connect):
    """Publish from another thread while a socket replays from 0: the replay and the live
    pushes overlap, and the client must still see 1..N exactly once each."""
    for n in range(300):
        await write_event_without_push(alice, n)  # a long log to replay
    stop = threading.Event()

    def keep_publishing() -> None:
        from django.db import close_old_connections, transaction

        from notifications import services

        while not stop.is_set():
            with transaction.atomic():
                services.publish(user_id=alice.pk, type="task.updated", data={})
        close_old_connections()

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        client = await connect(alice, query="last_event_id=0")
        ids = [e["id"] for e in await client.receive_events(400)]
    finally:
        stop.set()
        await asyncio.to_thread(publisher.join)
    newest = await newest_event_id(alice)
    ids += [e["id"] for e in await client.receive_events(newest - ids[-1])]
    assert ids == list(range(1, newest + 1))
    await client.assert_nothing_more()


def test_old_events_are_pruned_by_retention_and_ids_are_never_reused(alice):
    from notifications import selectors, services
    from notifications.tasks import prune_old_events

    services.publish(user_id=alice.pk, type="task.updated", data={})
    services.publish(user_id=alice.pk, type="task.updated", data={})
    old = timezone.now() - timedelta(days=settings.TASKHUB_EVENT_RETENTION_DAYS + 1)
    Event.objects.filter(user=alice, seq=1).update(created_at=old)
    assert prune_old_events() == 1
    assert list(Event.objects.filter(user=alice).values_list("seq", flat=True)) == [2]
    assert selectors.newest_event_id(user_id=alice.pk) == 2
    assert services.publish(user_id=alice.pk, type="task.updated", data={}).seq == 3
