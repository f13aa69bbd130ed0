"""The /ws consumer through the full ASGI app on the real Redis channel layer: auth,
welcome, live pushes, isolation between users, errors and limits."""

from __future__ import annotations

import asyncio

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisSingleShardConnection
from django.test import Client as DjangoClient
from django.test import override_settings

from chat.models import ChatRoom
from conftest import access_token_for
from devserver.wsclient import eventually, open_in_process
from notifications import consumers, protocol, selectors
from notifications.redis_client import async_redis
from notifications.tests.conftest import publish_event, publish_event_data
from taskhub.lean_queue import LeanQueue

pytestmark = pytest.mark.django_db(transaction=True)


# --- Auth and welcome --------------------------------------------------------------------


async def test_welcome_names_the_user_the_version_and_the_newest_event_id(alice, connect):
    await publish_event(alice)
    await publish_event(alice)
    client = await connect(alice)
    data = client.welcome["data"]
    assert data["user"] == {"id": alice.pk, "username": "alice"}
    assert data["server_version"] == "1.0.0"
    assert data["last_event_id"] == 2
    assert "id" not in client.welcome


async def test_welcome_names_the_instance_holding_the_socket(alice, connect, settings):
    settings.TASKHUB_INSTANCE_NAME = "web7"
    client = await connect(alice)
    assert client.welcome["data"]["server"] == "web7"


async def test_welcome_last_event_id_is_zero_for_a_new_user(alice, connect):
    client = await connect(alice)
    assert client.welcome["data"]["last_event_id"] == 0


async def test_a_bad_token_is_closed_with_4401(transactional_db):
    client = await open_in_process(token="not-a-jwt")
    code, frames = await client.receive_close()
    assert code == 4401
    assert frames[0]["data"]["code"] == "unauthenticated"


async def test_no_credentials_at_all_is_closed_with_4401(transactional_db):
    client = await open_in_process()
    code, _ = await client.receive_close()
    assert code == 4401


async def test_an_inactive_users_token_is_closed_with_4401(alice, transactional_db):
    token = await sync_to_async(access_token_for)(alice)
    alice.is_active = False
    await sync_to_async(alice.save)()
    client = await open_in_process(token=token)
    code, _ = await client.receive_close()
    assert code == 4401


async def test_a_token_offered_as_subprotocol_authenticates_and_is_selected(alice, connect):
    token = await sync_to_async(access_token_for)(alice)
    client = await open_in_process(subprotocols=["taskhub", token])
    assert client.subprotocol == token
    welcome = await client.receive_type("welcome")
    assert welcome["data"]["user"]["username"] == "alice"
    await client.close()


async def test_the_session_cookie_authenticates_a_browser(alice, transactional_db):
    browser = DjangoClient()
    await sync_to_async(browser.force_login)(alice)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    client = await open_in_process(
        headers=[(b"cookie", cookie), (b"origin", b"http://localhost:8000")]
    )
    welcome = await client.receive_type("welcome")
    assert welcome["data"]["user"]["username"] == "alice"
    await client.close()


async def test_a_foreign_origin_is_closed_with_4403(alice, transactional_db):
    token = await sync_to_async(access_token_for)(alice)
    client = await open_in_process(token=token, headers=[(b"origin", b"https://evil.example")])
    code, frames = await client.receive_close()
    assert code == 4403
    assert frames == []


async def test_an_allowed_origin_and_a_missing_origin_are_both_served(alice, connect):
    token = await sync_to_async(access_token_for)(alice)
    browser = await open_in_process(token=token, headers=[(b"origin", b"http://127.0.0.1:8000")])
    await browser.receive_type("welcome")
    await browser.close()
    await connect(alice)  # no Origin header: a non-browser client


# --- Live events -------------------------------------------------------------------------


async def test_a_published_event_reaches_every_socket_of_its_user(alice, connect):
    first, second = await connect(alice), await connect(alice)
    event_id = await publish_event(alice, n=7)
    for client in (first, second):
        frame = await client.receive_type("task.updated")
        assert frame["id"] == event_id
        assert frame["data"] == {"n": 7}
        assert frame["ts"].endswith("Z")


async def test_bob_never_receives_alice_task_events(alice, bob, connect):
    alice_socket, bob_socket = await connect(alice), await connect(bob)
    for n in range(3):
        await publish_event(alice, n=n)
    assert [e["data"]["n"] for e in await alice_socket.receive_events(3)] == [0, 1, 2]
    await bob_socket.assert_nothing_more()


async def test_ephemeral_frames_are_sent_without_id(alice, connect):
    client = await connect(alice)
    await get_channel_layer().group_send(
        protocol.user_group(alice.pk),
        {"type": "event.push", "frame": protocol.envelope("chat.typing", {"room": "x"})},
    )
    frame = await client.receive_type("chat.typing")
    assert "id" not in frame


async def test_a_group_message_with_reply_to_adds_ref_only_for_that_socket(alice, connect):
    """The sender's own copy of a broadcast doubles as its ack (reply_to = its channel):
    here a chat post, the one producer that sets reply_to."""
    await sync_to_async(ChatRoom.objects.get_or_create)(
        slug="general", defaults={"name": "General", "is_public": True}
    )  # made by a migration, but an earlier transactional test flushed it
    poster, other = await connect(alice), await connect(alice)
    for client in (poster, other):
        await client.send({"type": "subscribe.chat", "room": "general", "ref": "sub"})
        await client.receive_type("chat.history")
    await poster.send({"type": "chat.message.post", "room": "general", "text": "hi", "ref": "c-1"})
    mine = await poster.receive_type("chat.message.posted")
    theirs = await other.receive_type("chat.message.posted")
    assert mine["ref"] == "c-1"
    assert "ref" not in theirs
    assert mine["data"] == theirs["data"]


async def test_progress_faster_than_the_interval_is_coalesced_to_the_newest(alice, connect):
    group = protocol.user_group(alice.pk)
    # The interval is the slack for the four frames to arrive before the held one is sent.
    with override_settings(TASKHUB_PROGRESS_MIN_INTERVAL=1.0):
        client = await connect(alice)
        for percent in (10, 20, 30, 40):
            frame = protocol.envelope("task.progress", {"task_id": "t1", "progress": percent})
            await get_channel_layer().group_send(group, {"type": "event.push", "frame": frame})
        first = await client.receive_type("task.progress")
        last = await client.receive_type("task.progress")
    assert first["data"]["progress"] == 10
    assert last["data"]["progress"] == 40
    await client.assert_nothing_more()


async def test_progress_after_the_task_finished_is_dropped(alice, connect):
    client = await connect(alice)
    await publish_event_data(alice, {"task_id": "t9", "status": "completed"})
    await client.receive_type("task.updated")
    late = protocol.envelope("task.progress", {"task_id": "t9", "progress": 90})
    await get_channel_layer().group_send(
        protocol.user_group(alice.pk), {"type": "event.push", "frame": late}
    )
    await client.assert_nothing_more()


# --- Client messages and errors ----------------------------------------------------------


async def test_ping_is_answered_with_pong_carrying_the_ref(alice, connect):
    client = await connect(alice)
    await client.send({"type": "ping", "ref": 42})
    pong = await client.receive_type("pong")
    assert pong["ref"] == 42


async def test_an_unknown_type_gets_an_unknown_type_error_with_the_ref(alice, connect):
    client = await connect(alice)
    await client.send({"type": "launch.rocket", "ref": "r1"})
    error = await client.receive_type("error")
    assert error["data"]["code"] == "unknown_type"
    assert error["data"]["ref"] == "r1"
    assert error["ref"] == "r1"


@pytest.mark.parametrize(
    "raw",
    ["{not json", "[1, 2]", '"hello"', "{}", '{"type": 5}', '{"type": "ping", "ref": [1]}'],
)
async def test_malformed_frames_get_a_bad_request_error_and_the_socket_stays(alice, connect, raw):
    client = await connect(alice)
    await client.send(raw)
    error = await client.receive_type("error")
    assert error["data"]["code"] == "bad_request"
    await client.assert_nothing_more()


async def test_repeated_bad_frames_close_with_4400(alice, connect):
    client = await connect(alice)
    with override_settings(TASKHUB_WS_MAX_BAD_FRAMES=3):
        for _ in range(3):
            await client.send("nope")
        code, frames = await client.receive_close()
    assert code == 4400
    assert [f["data"]["code"] for f in frames] == ["bad_request"] * 3


async def test_an_oversized_frame_closes_with_4400_and_others_are_still_served(alice, bob, connect):
    client, bystander = await connect(alice), await connect(bob)
    with override_settings(TASKHUB_WS_MAX_FRAME_BYTES=1024):
        await client.send({"type": "ping", "pad": "x" * 2000})
        code, frames = await client.receive_close()
    assert code == 4400
    assert frames[0]["data"]["code"] == "too_large"
    await bystander.assert_nothing_more()
    event_id = await publish_event(bob)
    assert (await bystander.receive_type("task.updated"))["id"] == event_id


async def test_a_flood_closes_with_4429_and_others_are_still_served(
    alice, bob, connect, fake_clock
):
    # The clock stands still: no token comes back, so the burst allowance is all there is.
    fake_clock(consumers)
    bystander = await connect(bob)
    with override_settings(TASKHUB_WS_MAX_MESSAGES_PER_SECOND=5):
        flooder = await connect(alice)
        for _ in range(50):
            await flooder.send({"type": "ping"})
        code, frames = await flooder.receive_close()
    assert code == 4429
    assert [f["type"] for f in frames] == ["pong"] * 5 + ["error"]
    assert frames[-1]["data"]["code"] == "rate_limited"
    await bystander.assert_nothing_more()
    event_id = await publish_event(bob)
    assert (await bystander.receive_type("task.updated"))["id"] == event_id


async def test_messages_within_the_rate_are_all_served(alice, connect, fake_clock):
    clock = fake_clock(consumers)
    with override_settings(TASKHUB_WS_MAX_MESSAGES_PER_SECOND=5):
        client = await connect(alice)
        for second in range(3):  # 5 a second for 3 s: 15 answered, none refused
            for n in range(5):
                await client.send({"type": "ping", "ref": f"{second}.{n}"})
                assert (await client.receive_type("pong"))["ref"] == f"{second}.{n}"
            clock.advance(1.0)
        await client.assert_nothing_more()


async def test_too_many_connections_of_one_user_close_with_4429(alice, bob, connect):
    with override_settings(TASKHUB_WS_MAX_CONNECTIONS_PER_USER=2):
        first = await connect(alice)
        await connect(alice)
        third = await connect(alice, welcome=False)
        code, frames = await third.receive_close()
        assert code == 4429
        assert frames[0]["data"]["code"] == "too_many_connections"
        await connect(bob)  # another user's sockets do not count
        await first.close()
        await connect(alice)  # a closed socket gives its slot back


async def test_a_silent_client_is_closed_with_4408(alice, connect):
    with override_settings(TASKHUB_WS_IDLE_TIMEOUT=1.0):
        client = await connect(alice)
        code, frames = await client.receive_close(timeout=10)
    assert code == 4408
    assert frames[0]["data"]["code"] == "idle"


async def test_pings_keep_a_socket_open_past_the_idle_timeout(alice, bob, connect, fake_clock):
    """Two sockets on a clock the test moves: the one that pings stays, the silent one is
    closed by the same housekeeping pass."""
    clock = fake_clock(consumers)
    with override_settings(TASKHUB_WS_IDLE_TIMEOUT=1.0):
        silent, pinging = await connect(bob), await connect(alice)
        clock.advance(0.6)
        await pinging.assert_nothing_more()  # heard at 0.6
        clock.advance(0.6)  # 1.2 s since connect, 0.6 s since the ping
        code, frames = await silent.receive_close()
        assert (code, frames[0]["data"]["code"]) == (4408, "idle")
        # Open past the idle timeout, and not closed by the pass that closed the other.
        await pinging.assert_nothing_more()


async def test_active_connections_are_counted_and_released(alice, bob, connect):
    count = sync_to_async(selectors.active_connection_count)
    assert await count() == 0
    first = await connect(alice)
    await connect(bob)
    assert await count() == 2
    await first.close()
    assert await count() == 1


async def test_chat_commands_go_to_the_handler_chat_registered_with_the_consumer_api(
    alice, connect, monkeypatch
):
    calls = []

    async def handle(consumer, message):
        calls.append(message["type"])
        await consumer.join_group("chat.room.test")
        await consumer.reply("chat.history", {"room": message["room"]}, ref=message.get("ref"))

    # ChatConfig.ready() registered chat.ws.handle; this handler stands in for it.
    monkeypatch.setattr(protocol, "client_command_handlers", {})
    protocol.register_client_commands(handle, protocol.CHAT_COMMANDS)
    client = await connect(alice)
    await client.send({"type": "subscribe.chat", "room": "lobby", "ref": 3})
    history = await client.receive_type("chat.history")
    assert history["ref"] == 3
    assert calls == ["subscribe.chat"]
    frame = protocol.envelope("chat.message.posted", {"text": "hi"})
    await get_channel_layer().group_send("chat.room.test", {"type": "event.push", "frame": frame})
    assert (await client.receive())["data"] == {"text": "hi"}


def test_chat_registers_its_commands_when_the_app_is_ready():
    from chat import ws

    commands = {"subscribe.chat", "unsubscribe.chat", "chat.message.post", "chat.message.edit"}
    commands.add("chat.typing")
    registered = {t: h for t, h in protocol.client_command_handlers.items() if h is ws.handle}
    assert registered == dict.fromkeys(commands, ws.handle)
    assert ws.resend_history in protocol.resync_hooks


def test_only_the_protocol_s_commands_can_be_registered():
    async def handle(consumer, message):
        pass

    with pytest.raises(ValueError, match="not client commands"):
        protocol.register_client_commands(handle, {"ping.me"})
    with pytest.raises(ValueError, match="already has a handler"):
        protocol.register_client_commands(handle, {"chat.typing"})


async def test_chat_commands_without_chat_get_an_unavailable_error(alice, connect, monkeypatch):
    monkeypatch.setattr(protocol, "client_command_handlers", {})  # chat not installed
    client = await connect(alice)
    await client.send({"type": "chat.typing", "room": "lobby", "ref": "t"})
    error = await client.receive_type("error")
    assert error["data"]["code"] == "unavailable"
    assert error["ref"] == "t"
    await client.send({"type": "chat.shout", "ref": "u"})
    error = await client.receive_type("error")
    assert (error["data"]["code"], error["ref"]) == ("unknown_type", "u")


# --- One message at a time --------------------------------------------------------------


async def test_a_push_waits_until_the_client_frame_in_hand_is_handled(alice, connect, monkeypatch):
    # Channels' rule, on which the consumer's order and no-duplicate guarantees rest (the
    # module docstring): a push never runs beside a client's frame, it waits for it.
    in_hand, release = asyncio.Event(), asyncio.Event()

    async def slow_command(consumer, message):
        in_hand.set()
        await release.wait()
        await consumer.reply("chat.history", {"room": message["room"]}, ref=message.get("ref"))

    monkeypatch.setattr(protocol, "client_command_handlers", {})
    protocol.register_client_commands(slow_command, protocol.CHAT_COMMANDS)
    client = await connect(alice)
    await client.send({"type": "subscribe.chat", "room": "lobby", "ref": 1})
    await asyncio.wait_for(in_hand.wait(), 10)
    pushed = await publish_event(alice)  # after commit, while the command is in hand

    # A push handled now would arrive within milliseconds.
    assert await client.communicator.receive_nothing(timeout=1.0)
    release.set()
    first, second = await client.receive(), await client.receive()
    assert (first["type"], first["ref"]) == ("chat.history", 1)
    assert second["id"] == pushed


async def _socket_for(user):
    """An in-process socket past its welcome, opened without `connect`: these end."""
    client = await open_in_process(token=await sync_to_async(access_token_for)(user))
    await client.receive_type("welcome")
    return client


async def _ended(client):
    """The socket's application, once it has ended."""
    application = client.communicator.future

    async def done() -> bool:
        return application.done()

    await eventually(done, message="the consumer ended")
    return application


async def test_a_layer_message_no_handler_takes_ends_the_socket_and_releases_it(alice, connect):
    # As in Channels: an exception from a handler ends the consumer (Daphne then closes
    # the socket with 1011), whichever side the message came from. `connect` is here for
    # its clean-up of this loop's pools.
    count = sync_to_async(selectors.active_connection_count)
    client = await _socket_for(alice)
    assert await count() == 1

    await get_channel_layer().group_send(protocol.user_group(alice.pk), {"type": "no.such"})

    application = await _ended(client)
    with pytest.raises(ValueError, match=r"No handler for message type no\.such"):
        application.result()
    await eventually(lambda: selectors.active_connection_count() == 0, message="released")


async def test_a_socket_ended_by_a_layer_handler_leaves_no_channel_subscribed(alice, connect):
    # channels_redis unsubscribes a channel only when a receive waiting on it is
    # cancelled; a reader that ended in a handler never is. Left so, every such socket
    # kept a queue in this process and a subscription in Redis for the life of Daphne.
    layer = get_channel_layer()
    before = set(layer._get_layer().channels)
    client = await _socket_for(alice)
    (channel,) = set(layer._get_layer().channels) - before
    assert await subscribers(channel) == 1
    # Held for the socket's life: the lean queue, not asyncio.Queue's four deques.
    assert isinstance(layer._get_layer().channels[channel], LeanQueue)

    await layer.group_send(protocol.user_group(alice.pk), {"type": "no.such"})

    await _ended(client)
    assert channel not in layer._get_layer().channels

    async def unsubscribed() -> bool:  # an UNSUBSCRIBE is not answered before NUMSUB is
        return await subscribers(channel) == 0

    await eventually(unsubscribed, message="the channel was unsubscribed in Redis")


async def test_a_connect_whose_subscribe_fails_leaves_no_channel_behind(
    alice, connect, monkeypatch
):
    # channels_redis makes the channel's queue before it subscribes; a subscribe that
    # failed (Redis away) left the queue in the process for good.
    async def redis_away(shard, channel):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(RedisSingleShardConnection, "subscribe", redis_away)
    layer = get_channel_layer()
    before = set(layer._get_layer().channels)

    client = await open_in_process(token=await sync_to_async(access_token_for)(alice))
    code, _ = await client.receive_close()

    assert code == consumers.CLOSE_SERVICE_UNAVAILABLE
    assert set(layer._get_layer().channels) == before


async def subscribers(channel: str) -> int:
    """How many Redis connections subscribe `channel` (PUBSUB NUMSUB)."""
    client = async_redis()
    [(_, count)] = await client.pubsub_numsub(channel)
    return count


async def test_a_layer_handler_cancelled_from_outside_ends_the_socket_with_an_error(
    alice, connect, monkeypatch
):
    # Ended as a plain cancel, the socket would stay open with nothing reading it: Daphne
    # neither logs a cancelled application nor closes its socket.
    async def cancelled(consumer, message):
        raise asyncio.CancelledError  # as when something it awaits is cancelled

    monkeypatch.setitem(protocol.group_message_handlers, "test.cancelled", cancelled)
    client = await _socket_for(alice)

    await get_channel_layer().group_send(protocol.user_group(alice.pk), {"type": "test.cancelled"})

    application = await _ended(client)
    with pytest.raises(RuntimeError, match="handler was cancelled"):
        application.result()


# --- A client gone before its frame ------------------------------------------------------


async def test_a_frame_for_a_client_that_is_already_gone_is_dropped_without_an_error():
    # Under Daphne, a send to a socket autobahn has already closed (a client that sent a
    # malformed frame before its welcome, issue 13's R6) raises Disconnected: the
    # consumer's connect logged it as "websocket setup failed", with a traceback.
    from autobahn.exception import Disconnected

    async def closed_protocol(message):
        raise Disconnected("Attempt to send on a closed protocol")

    consumer = consumers.EventConsumer()
    consumer.base_send = closed_protocol
    await consumer.send_frame(protocol.envelope(protocol.WELCOME, {}))

    assert consumer._closed  # nothing more is sent; its disconnect releases it
