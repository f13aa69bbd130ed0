"""Chat over /ws, through taskhub.asgi.application and the real Redis channel layer."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chat import services
from chat.models import Message
from conftest import subscribed_in_redis
from devserver.wsclient import eventually

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def post_stored(room, author, text: str) -> Message:
    if room.is_public:
        services.chat_room_join(room=room, user=author)
    return services.chat_message_post(room=room, author=author, text=text)


@database_sync_to_async
def stored_text(message_id: int) -> str:
    return Message.objects.get(pk=message_id).text


async def subscribed_becomes(room, count: int) -> None:
    """Wait (bounded) until Redis has `count` subscriptions to the room's group: the
    layer sends an UNSUBSCRIBE without awaiting its answer."""
    group = services.room_group(room.id)
    await eventually(
        lambda: subscribed_in_redis(group) == count, message=f"{count} subscribed to {group}"
    )


async def test_subscribe_sends_the_last_20_messages_oldest_first(connect, general_room, alice):
    for n in range(25):
        await post_stored(general_room, alice, f"message {n}")
    tab = await connect(alice)
    history = await tab.subscribe("general")
    assert history["ref"] == "sub"
    assert "id" not in history
    assert history["data"]["room"] == "general"
    messages = history["data"]["messages"]
    assert [m["text"] for m in messages] == [f"message {n}" for n in range(5, 25)]
    assert messages[0]["author"] == {"id": alice.id, "username": "alice"}
    assert set(messages[0]) == {"id", "room", "author", "text", "created_at", "edited_at"}


async def test_a_post_reaches_every_subscriber_once_and_the_poster_gets_its_ref(
    connect, general_room, alice, bob
):
    alice_tab = await connect(alice)
    bob_tab_1 = await connect(bob)
    bob_tab_2 = await connect(bob)
    for tab in (alice_tab, bob_tab_1, bob_tab_2):
        await tab.subscribe("general")

    posted = await alice_tab.request(
        {"type": "chat.message.post", "room": "general", "text": "hi bob", "ref": "p1"}
    )
    assert posted["type"] == "chat.message.posted"
    assert posted["ref"] == "p1"
    assert "id" not in posted
    assert posted["data"]["text"] == "hi bob"
    assert posted["data"]["author"] == {"id": alice.id, "username": "alice"}
    assert await stored_text(posted["data"]["id"]) == "hi bob"

    for tab in (bob_tab_1, bob_tab_2):
        seen = await tab.receive()
        assert "ref" not in seen  # the ref is the poster's business
        assert seen["type"] == "chat.message.posted"
        await tab.assert_nothing_more()  # once per tab, not twice
    await alice_tab.assert_nothing_more()


async def test_after_unsubscribe_nothing_more_arrives(connect, general_room, alice, bob):
    alice_tab = await connect(alice)
    bob_tab = await connect(bob)
    await alice_tab.subscribe("general")
    await bob_tab.subscribe("general")
    await bob_tab.send({"type": "unsubscribe.chat", "room": "general"})
    await bob_tab.assert_nothing_more()  # the unsubscribe has been handled

    await alice_tab.request({"type": "chat.message.post", "room": "general", "text": "anyone?"})
    await bob_tab.assert_nothing_more()
    await subscribed_becomes(general_room, 1)  # alice's tab still follows it


async def test_unsubscribe_without_a_room_leaves_every_room(connect, general_room, alice):
    room = await database_sync_to_async(services.chat_room_create)(creator=alice, name="Side")
    tab = await connect(alice)
    await tab.subscribe("general")
    await tab.subscribe(room.slug)
    await tab.send({"type": "unsubscribe.chat"})
    await tab.assert_nothing_more()
    await subscribed_becomes(general_room, 0)
    await subscribed_becomes(room, 0)
    other_tab = await connect(alice)
    for slug in ("general", room.slug):
        await other_tab.request({"type": "chat.message.post", "room": slug, "text": "still?"})
    await tab.assert_nothing_more()


async def test_disconnect_leaves_the_room_group(connect, general_room, alice):
    tab = await connect(alice)
    await tab.subscribe("general")
    await subscribed_becomes(general_room, 1)
    await tab.close()
    await subscribed_becomes(general_room, 0)


async def test_an_edit_by_the_author_reaches_everyone(connect, general_room, alice, bob):
    alice_tab = await connect(alice)
    bob_tab = await connect(bob)
    await alice_tab.subscribe("general")
    await bob_tab.subscribe("general")
    posted = await alice_tab.request(
        {"type": "chat.message.post", "room": "general", "text": "teh"}
    )
    await bob_tab.receive()

    edited = await alice_tab.request(
        {"type": "chat.message.edit", "message_id": posted["data"]["id"], "text": "the", "ref": 9}
    )
    assert edited["type"] == "chat.message.edited"
    assert edited["ref"] == 9
    assert edited["data"]["text"] == "the"
    assert edited["data"]["edited_at"] is not None
    assert edited["data"]["created_at"] == posted["data"]["created_at"]
    assert (await bob_tab.receive())["data"] == edited["data"]


async def test_an_edit_by_someone_else_is_refused(connect, general_room, alice, bob):
    message = await post_stored(general_room, alice, "original")
    bob_tab = await connect(bob)
    await bob_tab.subscribe("general")
    refused = await bob_tab.request(
        {"type": "chat.message.edit", "message_id": message.id, "text": "hacked", "ref": "e"}
    )
    assert refused["type"] == "error"
    assert refused["data"]["code"] == "forbidden"
    assert refused["ref"] == "e"
    assert await stored_text(message.id) == "original"
    await bob_tab.assert_nothing_more()


async def test_a_private_rooms_messages_never_reach_a_non_member(
    connect, general_room, alice, bob, private_room
):
    alice_tab = await connect(alice)
    bob_tab = await connect(bob)
    await alice_tab.subscribe(private_room.slug)
    await bob_tab.subscribe("general")

    refused = await bob_tab.request({"type": "subscribe.chat", "room": private_room.slug})
    assert (refused["type"], refused["data"]["code"]) == ("error", "not_found")
    no_such_room = await bob_tab.request({"type": "subscribe.chat", "room": "no-such-room"})
    assert no_such_room["data"] == refused["data"], "a private room must not be confirmed"
    refused = await bob_tab.request(
        {"type": "chat.message.post", "room": private_room.slug, "text": "let me in"}
    )
    assert (refused["type"], refused["data"]["code"]) == ("error", "not_found")
    secret = await alice_tab.request(
        {"type": "chat.message.post", "room": private_room.slug, "text": "secret"}
    )
    assert secret["type"] == "chat.message.posted"
    refused = await bob_tab.request(
        {"type": "chat.message.edit", "message_id": secret["data"]["id"], "text": "x"}
    )
    assert (refused["type"], refused["data"]["code"]) == ("error", "not_found")
    await bob_tab.assert_nothing_more()


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"type": "subscribe.chat", "room": "no-such-room"}, "not_found"),
        ({"type": "subscribe.chat"}, "bad_request"),
        ({"type": "subscribe.chat", "room": "chat.1 evil"}, "bad_request"),
        ({"type": "subscribe.chat", "room": ["general"]}, "bad_request"),
        ({"type": "unsubscribe.chat", "room": "no-such-room"}, "not_found"),
        ({"type": "chat.message.post", "room": "no-such-room", "text": "hi"}, "not_found"),
        ({"type": "chat.message.post", "room": "general"}, "bad_request"),
        ({"type": "chat.message.post", "room": "general", "text": "   "}, "invalid"),
        ({"type": "chat.message.post", "room": "general", "text": "x" * 2001}, "invalid"),
        ({"type": "chat.message.edit", "message_id": "1", "text": "x"}, "bad_request"),
        ({"type": "chat.message.edit", "message_id": True, "text": "x"}, "bad_request"),
        ({"type": "chat.message.edit", "message_id": 2**70, "text": "x"}, "bad_request"),
        ({"type": "chat.message.edit", "message_id": 999999999, "text": "x"}, "not_found"),
        ({"type": "chat.typing", "room": "no-such-room"}, "not_found"),
    ],
)
async def test_bad_commands_get_an_error_frame_with_the_ref(
    connect, general_room, alice, command, code
):
    tab = await connect(alice)
    await tab.subscribe("general")
    reply = await tab.request({**command, "ref": "r"})
    assert reply["type"] == "error", reply
    assert reply["data"]["code"] == code
    assert reply["data"]["detail"]
    assert reply["ref"] == "r"
    await tab.assert_nothing_more()  # and the socket carries on


async def test_posting_to_a_room_this_tab_does_not_follow_still_acks(connect, general_room, alice):
    await post_stored(general_room, alice, "joined earlier")
    tab = await connect(alice)
    posted = await tab.request(
        {"type": "chat.message.post", "room": "general", "text": "from afar", "ref": "a"}
    )
    assert (posted["type"], posted["ref"]) == ("chat.message.posted", "a")
    await tab.assert_nothing_more()


async def test_typing_reaches_the_room_and_is_rate_limited(
    connect, general_room, alice, bob, settings
):
    settings.TASKHUB_CHAT_TYPING_INTERVAL = 30  # nothing in this test may outlast the window
    alice_tab = await connect(alice)
    bob_tab = await connect(bob)
    await alice_tab.subscribe("general")
    await bob_tab.subscribe("general")
    await alice_tab.send({"type": "chat.typing", "room": "general"})
    typing = await bob_tab.receive()
    assert typing["type"] == "chat.typing"
    assert "id" not in typing
    assert typing["data"] == {"room": "general", "user": {"id": alice.id, "username": "alice"}}
    # Echoed to the typist's own sockets too; clients skip their own user id.
    assert (await alice_tab.receive())["data"]["user"]["id"] == alice.id

    await alice_tab.send({"type": "chat.typing", "room": "general", "ref": "again"})
    await alice_tab.assert_nothing_more()  # dropped silently, no error
    await bob_tab.assert_nothing_more()
