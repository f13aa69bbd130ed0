"""Chat end to end: a real Daphne (taskhub.asgi) and real `websockets` clients.

Each test is a plain function that prepares users in the test database and then runs one
asyncio scenario against the server; the server sees only committed rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User

from chat.models import Message
from conftest import access_token_for
from devserver import testing
from devserver.wsclient import Socket, open_network

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT = 10  # a bound on waiting for the server, not a speed claim


async def open_tab(base_url: str, token: str) -> Socket:
    """A /ws connection to the real server with `token`, past its welcome."""
    tab = await open_network(base_url, token=token)
    await tab.receive_type("welcome")
    return tab


async def messages_on_subscribe(tab: Socket, room: str) -> list[dict[str, Any]]:
    return (await tab.subscribe(room))["data"]["messages"]


def test_two_users_in_general_each_receive_a_post_once(daphne_server, general_room, alice, bob):
    alice_token, bob_token = access_token_for(alice), access_token_for(bob)

    async def scenario() -> None:
        alice_tab, bob_tab = (
            await open_tab(daphne_server, alice_token),
            await open_tab(daphne_server, bob_token),
        )
        await alice_tab.subscribe("general")
        await bob_tab.subscribe("general")
        posted = await alice_tab.post("general", "hello from alice", ref="a-1")
        seen = await bob_tab.receive()
        assert seen["type"] == "chat.message.posted"
        assert "ref" not in seen
        assert seen["data"] == posted["data"]  # same id, same created_at, same text
        assert seen["data"]["author"] == {"id": alice.id, "username": "alice"}
        await bob_tab.assert_nothing_more()
        await alice_tab.assert_nothing_more()
        await alice_tab.close()
        await bob_tab.close()

    asyncio.run(scenario())


def test_a_new_subscriber_gets_exactly_the_last_20_of_25(
    daphne_server, general_room, alice, bob, carol
):
    tokens = [access_token_for(user) for user in (alice, bob, carol)]

    async def scenario() -> None:
        alice_tab, bob_tab, carol_tab = [await open_tab(daphne_server, t) for t in tokens]
        await alice_tab.subscribe("general")
        await bob_tab.subscribe("general")
        sent = []
        for n in range(25):
            # Two posters take turns, as a conversation does (and stay far below the
            # per-connection message rate).
            poster, listener = (alice_tab, bob_tab) if n % 2 == 0 else (bob_tab, alice_tab)
            posted = await poster.post("general", f"line {n}", ref=f"r{n}")
            assert (await listener.receive())["data"]["id"] == posted["data"]["id"]
            sent.append(posted["data"])
        assert await messages_on_subscribe(carol_tab, "general") == sent[5:]
        for tab in (alice_tab, bob_tab, carol_tab):
            await tab.close()

    asyncio.run(scenario())


def test_edits_by_the_author_reach_everyone_and_others_are_refused(
    daphne_server, general_room, alice, bob
):
    alice_token, bob_token = access_token_for(alice), access_token_for(bob)

    async def scenario() -> None:
        alice_tab, bob_tab = (
            await open_tab(daphne_server, alice_token),
            await open_tab(daphne_server, bob_token),
        )
        await alice_tab.subscribe("general")
        await bob_tab.subscribe("general")
        posted = await alice_tab.post("general", "see you at 3")
        await bob_tab.receive()
        message_id = posted["data"]["id"]

        refused = await bob_tab.request(
            {"type": "chat.message.edit", "message_id": message_id, "text": "cancelled", "ref": 1}
        )
        assert (refused["type"], refused["data"]["code"], refused["ref"]) == (
            "error",
            "forbidden",
            1,
        )
        await alice_tab.assert_nothing_more()

        edited = await alice_tab.request(
            {"type": "chat.message.edit", "message_id": message_id, "text": "see you at 4"}
        )
        assert edited["type"] == "chat.message.edited"
        assert (await bob_tab.receive())["data"] == edited["data"]
        assert edited["data"]["text"] == "see you at 4"
        assert edited["data"]["edited_at"] is not None
        late_tab = await open_tab(daphne_server, bob_token)
        assert (await messages_on_subscribe(late_tab, "general"))[-1] == edited["data"]
        for tab in (alice_tab, bob_tab, late_tab):
            await tab.close()

    asyncio.run(scenario())
    assert Message.objects.get().text == "see you at 4"


def test_a_private_rooms_messages_never_reach_a_non_member(daphne_server, general_room, alice, bob):
    alice_token, bob_token = access_token_for(alice), access_token_for(bob)
    created = httpx.post(
        f"{daphne_server}/api/chat/rooms/",
        json={"name": "Plans", "slug": "plans", "is_public": False},
        headers={"Authorization": f"Bearer {access_token_for(alice)}"},
        timeout=TIMEOUT,
    )
    assert created.status_code == 201, created.text

    async def scenario() -> None:
        alice_tab, bob_tab = (
            await open_tab(daphne_server, alice_token),
            await open_tab(daphne_server, bob_token),
        )
        await alice_tab.subscribe("plans")
        await alice_tab.subscribe("general")
        await bob_tab.subscribe("general")
        refused = await bob_tab.request({"type": "subscribe.chat", "room": "plans"})
        assert (refused["type"], refused["data"]["code"]) == ("error", "not_found")

        await alice_tab.post("plans", "surprise party for bob")
        await alice_tab.post("general", "nothing to see here")
        seen = await bob_tab.receive()
        assert seen["data"]["text"] == "nothing to see here"
        await bob_tab.assert_nothing_more()
        await alice_tab.close()
        await bob_tab.close()

    asyncio.run(scenario())
    bobs_view = httpx.get(
        f"{daphne_server}/api/chat/rooms/plans/messages/",
        headers={"Authorization": f"Bearer {access_token_for(bob)}"},
        timeout=TIMEOUT,
    )
    assert bobs_view.status_code == 404


def test_messages_survive_a_restart_of_the_web_process(transactional_db, general_room, alice, bob):
    web, base_url = testing.start_daphne()
    try:

        async def before_restart() -> dict[str, Any]:
            tab = await open_tab(base_url, access_token_for(alice))
            await tab.subscribe("general")
            posted = await tab.post("general", "written before the restart")
            await tab.close()
            return posted["data"]

        written = asyncio.run(before_restart())
    finally:
        web.stop()

    web, base_url = testing.start_daphne()
    try:

        async def after_restart() -> list[dict[str, Any]]:
            tab = await open_tab(base_url, access_token_for(bob))
            history = await messages_on_subscribe(tab, "general")
            await tab.close()
            return history

        assert asyncio.run(after_restart()) == [written]
    finally:
        web.stop()


def test_150_clients_in_one_room_all_receive_a_broadcast(daphne_server, general_room, alice):
    listeners = User.objects.bulk_create(User(username=f"listener{n}") for n in range(149))
    tokens = [access_token_for(user) for user in listeners]
    alice_token = access_token_for(alice)

    async def scenario() -> None:
        # A bounded number of handshakes at a time, as clients arriving over a moment do.
        gate = asyncio.Semaphore(30)

        async def join(token: str) -> Socket:
            async with gate:
                tab = await open_tab(daphne_server, token)
                await tab.subscribe("general")
                return tab

        tabs = await asyncio.gather(*(join(token) for token in tokens))
        poster = await join(alice_token)
        posted = await poster.post("general", "hello, everyone")
        received = await asyncio.gather(*(tab.receive() for tab in tabs))
        assert [(f["type"], f["data"]) for f in received] == [
            ("chat.message.posted", posted["data"])
        ] * len(listeners)
        # Once each: a second copy would arrive before the pong.
        await asyncio.gather(*(tab.assert_nothing_more() for tab in tabs))
        await asyncio.gather(*(tab.close() for tab in [*tabs, poster]))

    asyncio.run(scenario())


def test_leaving_a_private_room_over_rest_cuts_off_the_users_open_sockets_at_once(
    daphne_server, alice, bob
):
    """Bob has the room open in two tabs and leaves it over REST: both sockets get
    `chat.unsubscribed` (left) before anything else of the room, and alice's next message
    there reaches alice only. A real Daphne and real sockets on the real Redis layer."""
    from chat import services

    room = services.chat_room_create(creator=alice, name="Crew", is_public=False)
    services.chat_room_invite(room=room, by=alice, username="bob")
    alice_token, bob_token = access_token_for(alice), access_token_for(bob)

    async def scenario() -> None:
        alice_tab = await open_tab(daphne_server, alice_token)
        bob_tabs = [await open_tab(daphne_server, bob_token) for _ in range(2)]
        for tab in (alice_tab, *bob_tabs):
            await tab.subscribe(room.slug)

        async with httpx.AsyncClient(base_url=daphne_server) as http:
            left = await http.post(
                f"/api/chat/rooms/{room.slug}/leave/",
                headers={"Authorization": f"Bearer {bob_token}"},
            )
        assert left.status_code == 204

        for tab in bob_tabs:
            frame = await tab.receive_type("chat.unsubscribed", timeout=TIMEOUT)
            assert frame["data"] == {"room": room.slug, "reason": "left"}
        await alice_tab.post(room.slug, "still here?", ref="a-1")
        for tab in bob_tabs:
            await tab.assert_nothing_more()
            refused = await tab.request({"type": "subscribe.chat", "room": room.slug})
            assert (refused["type"], refused["data"]["code"]) == ("error", "not_found")
        await alice_tab.assert_nothing_more()
        for tab in (alice_tab, *bob_tabs):
            await tab.close()

    asyncio.run(scenario())
