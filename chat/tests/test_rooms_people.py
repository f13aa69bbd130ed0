"""Rooms people use (issue 15 §6): invites, direct messages, deleting your own message,
and the room list a page builds its sidebar from."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from chat import services
from chat.models import ChatParticipant, ChatRoom, Message
from notifications import protocol

pytestmark = pytest.mark.django_db


# --- Invites -------------------------------------------------------------------------------


def test_a_member_invites_a_user_into_a_private_room_by_username(
    client_for, alice, bob, private_room
):
    response = client_for(alice).post(
        f"/api/chat/rooms/{private_room.slug}/invite/", {"username": "bob"}, format="json"
    )

    assert response.status_code == 201, response.json()
    assert response.json() == {
        "room": private_room.slug,
        "user": {"id": bob.id, "username": "bob"},
        "role": "member",
        "added": True,
    }
    bob_rooms = client_for(bob).get("/api/chat/rooms/").json()["results"]
    assert private_room.slug in {r["slug"] for r in bob_rooms}


def test_inviting_a_participant_again_changes_nothing(client_for, alice, bob, private_room):
    client_for(alice).post(
        f"/api/chat/rooms/{private_room.slug}/invite/", {"username": "bob"}, format="json"
    )
    again = client_for(alice).post(
        f"/api/chat/rooms/{private_room.slug}/invite/", {"username": "bob"}, format="json"
    )
    assert (again.status_code, again.json()["added"]) == (200, False)
    assert ChatParticipant.objects.filter(room=private_room, user=bob).count() == 1


def test_an_invited_member_may_invite_too_but_an_outsider_sees_no_room(
    client_for, alice, bob, carol, private_room
):
    services.chat_room_invite(room=private_room, by=alice, username="bob")
    by_bob = client_for(bob).post(
        f"/api/chat/rooms/{private_room.slug}/invite/", {"username": "carol"}, format="json"
    )
    assert by_bob.status_code == 201
    services.chat_room_leave(room=private_room, user=carol)
    by_carol = client_for(carol).post(
        f"/api/chat/rooms/{private_room.slug}/invite/", {"username": "carol"}, format="json"
    )
    assert by_carol.status_code == 404


def test_inviting_nobody_is_a_404_naming_the_username(client_for, alice, private_room):
    response = client_for(alice).post(
        f"/api/chat/rooms/{private_room.slug}/invite/", {"username": "nobody"}, format="json"
    )
    assert response.status_code == 404
    assert "nobody" in str(response.json())


def test_a_public_room_invite_needs_the_inviter_to_be_in_it(bob, carol, general_room):
    with pytest.raises(PermissionDenied):
        services.chat_room_invite(room=general_room, by=bob, username="carol")


def test_the_invitee_is_told_after_commit(
    alice, bob, private_room, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr(
        services.push, "group_send_now", lambda messages, what: sent.extend(messages)
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.chat_room_invite(room=private_room, by=alice, username="bob")
    assert sent == []
    for callback in callbacks:
        callback()
    assert [(group, m["frame"]["type"], m["frame"]["data"]) for group, m in sent] == [
        (
            protocol.user_group(bob.id),
            protocol.CHAT_ROOM_ADDED,
            {"room": private_room.slug, "reason": "invited"},
        )
    ]


# --- Direct messages ------------------------------------------------------------------------


def test_starting_direct_messages_twice_gives_the_same_room_from_either_side(
    client_for, alice, bob
):
    first = client_for(alice).post("/api/chat/direct/", {"username": "bob"}, format="json")
    second = client_for(bob).post("/api/chat/direct/", {"username": "alice"}, format="json")

    assert first.status_code == 201, first.json()
    assert second.status_code == 200
    assert first.json()["slug"] == second.json()["slug"]
    assert first.json()["kind"] == "direct"
    assert first.json()["is_public"] is False
    assert first.json()["peer"] == {"id": bob.id, "username": "bob"}
    assert second.json()["peer"] == {"id": alice.id, "username": "alice"}
    room = ChatRoom.objects.get(slug=first.json()["slug"])
    assert set(room.participants.values_list("user__username", flat=True)) == {"alice", "bob"}


def test_a_third_user_never_sees_nor_joins_a_direct_room(client_for, alice, bob, carol):
    room, _ = services.chat_direct_open(user=alice, username="bob")
    assert client_for(carol).get(f"/api/chat/rooms/{room.slug}/").status_code == 404
    assert client_for(carol).post(f"/api/chat/rooms/{room.slug}/join/").status_code == 404
    with pytest.raises(PermissionDenied):
        services.chat_room_invite(room=room, by=alice, username="carol")


def test_direct_messages_with_yourself_or_nobody_are_refused(client_for, alice):
    assert client_for(alice).post("/api/chat/direct/", {"username": "alice"}).status_code == 400
    assert client_for(alice).post("/api/chat/direct/", {"username": "zed"}).status_code == 404


def test_a_side_that_left_is_back_when_either_starts_again(alice, bob):
    room, _ = services.chat_direct_open(user=alice, username="bob")
    services.chat_room_leave(room=room, user=bob)
    again, created = services.chat_direct_open(user=alice, username="bob")
    assert (again.pk, created) == (room.pk, False)
    assert room.participants.filter(user=bob).exists()


def test_no_user_room_may_take_a_direct_slug(alice):
    with pytest.raises(ValidationError):
        services.chat_room_create(creator=alice, name="x", slug="dm-1-2")


# --- Deleting your own message --------------------------------------------------------------


def test_an_author_deletes_their_message_and_the_room_hears_it(
    client_for, alice, bob, general_room, post, monkeypatch, django_capture_on_commit_callbacks
):
    message = post(general_room, alice, "oops")
    sent = []
    monkeypatch.setattr(
        services.push, "group_send_now", lambda messages, what: sent.extend(messages)
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(alice).delete(f"/api/chat/messages/{message.id}/")
    assert response.status_code == 204
    assert not Message.objects.filter(pk=message.pk).exists()
    assert [(g, m["frame"]["type"], m["frame"]["data"]) for g, m in sent] == [
        (
            services.room_group(general_room.id),
            protocol.CHAT_MESSAGE_DELETED,
            {"id": message.id, "room": "general"},
        )
    ]


def test_nobody_deletes_someone_elses_message(client_for, alice, bob, general_room, post):
    message = post(general_room, alice, "mine")
    assert client_for(bob).delete(f"/api/chat/messages/{message.id}/").status_code == 403
    assert client_for(bob).delete("/api/chat/messages/99999999999999999999/").status_code == 404
    assert Message.objects.filter(pk=message.pk).exists()


def test_a_private_rooms_message_is_a_404_to_an_outsider(client_for, alice, bob, private_room):
    message = services.chat_message_post(room=private_room, author=alice, text="secret")
    assert client_for(bob).delete(f"/api/chat/messages/{message.id}/").status_code == 404


# --- History pages, as the page scrolls back -------------------------------------------------


def test_scrolling_back_pages_through_every_message_once(client_for, alice, general_room, post):
    ids = [post(general_room, alice, f"m{i}").id for i in range(45)]
    client = client_for(alice)
    seen, before = [], None
    while True:
        query = "?limit=20" + (f"&before={before}" if before else "")
        page = client.get(f"/api/chat/rooms/general/messages/{query}").json()
        seen = [m["id"] for m in page["results"]] + seen
        if not page["has_more"]:
            break
        before = page["results"][0]["id"]
    assert seen == ids
