"""A socket loses a room at once when its user may no longer read it (docs/chat.md,
"Losing a room"): removed by a moderator, left over REST, the room turned private or
deleted. Real sockets through taskhub.asgi.application on the real Redis layer (the
root conftest.py's `connect`); the changes are the services' own, committed, so their
after-commit pushes run."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from chat import services
from chat.models import ParticipantRole

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def posted(room, author, text: str) -> None:
    if room.is_public:
        services.chat_room_join(room=room, user=author)
    services.chat_message_post(room=room, author=author, text=text)


@database_sync_to_async
def make_member(room, user) -> None:
    services.chat_room_member_set(room=room, user_id=user.pk, role=ParticipantRole.MEMBER)


async def test_a_member_removed_from_a_private_room_stops_receiving_it_at_once(
    connect, private_room, alice, bob
):
    await make_member(private_room, bob)
    alice_tab = await connect(alice)
    bob_tab = await connect(bob)
    bob_idle_tab = await connect(bob)  # not following the room: nothing to tell it
    await alice_tab.subscribe(private_room.slug)
    await bob_tab.subscribe(private_room.slug)

    await database_sync_to_async(services.chat_room_member_remove)(
        room=private_room, user_id=bob.pk
    )

    told = await bob_tab.receive_type("chat.unsubscribed")
    assert told["data"] == {"room": private_room.slug, "reason": "removed"}
    assert "id" not in told
    await posted(private_room, alice, "bob is gone")
    assert (await alice_tab.receive_type("chat.message.posted"))["data"]["text"] == "bob is gone"
    await bob_tab.assert_nothing_more()
    await bob_idle_tab.assert_nothing_more()
    await alice_tab.assert_nothing_more()  # a check for bob: alice's tab never hears of it


async def test_leaving_a_private_room_over_rest_ends_the_subscriptions_of_every_tab(
    connect, client_for, private_room, alice, bob
):
    await make_member(private_room, bob)
    tabs = [await connect(bob), await connect(bob)]
    for tab in tabs:
        await tab.subscribe(private_room.slug)
    api = await sync_to_async(client_for)(bob)

    left = await sync_to_async(api.post)(f"/api/chat/rooms/{private_room.slug}/leave/")

    assert left.status_code == 204
    for tab in tabs:
        told = await tab.receive_type("chat.unsubscribed")
        assert told["data"] == {"room": private_room.slug, "reason": "left"}
    await posted(private_room, alice, "after bob left")
    for tab in tabs:
        await tab.assert_nothing_more()


async def test_leaving_a_public_room_keeps_the_subscription_it_may_still_read(
    connect, general_room, alice, bob
):
    bob_tab = await connect(bob)
    await bob_tab.subscribe("general")

    await database_sync_to_async(services.chat_room_leave)(room=general_room, user=bob)
    await posted(general_room, alice, "still here")

    # Published after the check, so handled after it: the check kept the room.
    seen = await bob_tab.receive_type("chat.message.posted")
    assert seen["data"]["text"] == "still here"
    await bob_tab.assert_nothing_more()


async def test_a_room_made_private_is_dropped_by_sockets_of_non_members_only(
    connect, general_room, alice, bob
):
    alice_tab = await connect(alice)
    bob_tab = await connect(bob)
    await alice_tab.subscribe("general")  # a participant from now on
    await bob_tab.subscribe("general")
    await database_sync_to_async(services.chat_room_leave)(room=general_room, user=bob)
    await posted(general_room, alice, "still public")
    for tab in (alice_tab, bob_tab):  # bob's check has run (and kept the public room)
        assert (await tab.receive_type("chat.message.posted"))["data"]["text"] == "still public"

    await database_sync_to_async(services.chat_room_update)(
        room_id=general_room.id, name="General", is_public=False
    )

    told = await bob_tab.receive_type("chat.unsubscribed")
    assert told["data"] == {"room": "general", "reason": "private"}
    await alice_tab.assert_nothing_more()  # a member keeps the room, told nothing
    await posted(general_room, alice, "members only now")
    assert (await alice_tab.receive_type("chat.message.posted"))["data"]["text"] == (
        "members only now"
    )
    await bob_tab.assert_nothing_more()
    # And bob cannot follow it again.
    refused = await bob_tab.request({"type": "subscribe.chat", "room": "general", "ref": "s"})
    assert (refused["type"], refused["data"]["code"]) == ("error", "not_found")


async def test_a_deleted_room_tells_its_subscribers(connect, general_room, alice):
    alice_tab = await connect(alice)
    await alice_tab.subscribe("general")

    await database_sync_to_async(services.chat_room_delete)(room_id=general_room.id)

    told = await alice_tab.receive_type("chat.unsubscribed")
    assert told["data"] == {"room": "general", "reason": "deleted"}
    await alice_tab.assert_nothing_more()


async def test_a_member_readded_before_the_check_arrives_keeps_the_room(
    connect, private_room, alice, bob
):
    """The socket decides on what is committed when it handles the check, not on what the
    sender saw: a removal undone meanwhile leaves the subscription alone."""
    await make_member(private_room, bob)
    bob_tab = await connect(bob)
    await bob_tab.subscribe(private_room.slug)

    @database_sync_to_async
    def removed_and_readded() -> None:
        from django.db import transaction

        with transaction.atomic():
            services.chat_room_member_remove(room=private_room, user_id=bob.pk)
            services.chat_room_member_set(
                room=private_room, user_id=bob.pk, role=ParticipantRole.MEMBER
            )

    await removed_and_readded()
    await posted(private_room, alice, "welcome back")

    # Published after the check, so handled after it: no chat.unsubscribed came first.
    assert (await bob_tab.receive_type("chat.message.posted"))["data"]["text"] == "welcome back"
    await bob_tab.assert_nothing_more()
