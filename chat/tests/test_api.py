"""The chat REST API as a client uses it: rooms, membership, history pages, read marks."""

from __future__ import annotations

import pytest

from chat.models import ChatParticipant, ChatRoom

pytestmark = pytest.mark.django_db


def test_anonymous_requests_are_refused(client_for, general_room):
    response = client_for(None).get("/api/chat/rooms/")
    assert response.status_code == 401


def test_room_list_shows_public_rooms_and_the_users_private_ones(
    client_for, general_room, alice, bob, private_room
):
    slugs = [r["slug"] for r in client_for(bob).get("/api/chat/rooms/").json()["results"]]
    assert slugs == ["general"]
    alice_rooms = client_for(alice).get("/api/chat/rooms/").json()["results"]
    assert {r["slug"]: r["role"] for r in alice_rooms} == {
        "general": None,
        private_room.slug: "owner",
    }


def test_creating_a_room(client_for, alice):
    response = client_for(alice).post(
        "/api/chat/rooms/", {"name": "Team Sync", "is_public": False}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "team-sync"
    assert body["is_public"] is False
    assert body["role"] == "owner"
    assert body["created_by"] == {"id": alice.id, "username": "alice"}
    assert body["unread_count"] == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "slug": "not a slug"}, "slug"),
        ({"name": ["list"]}, "name"),
    ],
)
def test_bad_room_input_is_a_400_with_field_errors(client_for, alice, payload, field):
    response = client_for(alice).post("/api/chat/rooms/", payload, format="json")
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not ChatRoom.objects.filter(created_by=alice).exists()


def test_a_duplicate_slug_is_a_400(client_for, alice, bob, general_room):
    response = client_for(bob).post(
        "/api/chat/rooms/", {"name": "Another", "slug": "general"}, format="json"
    )
    assert response.status_code == 400
    assert "slug" in response.json()


def test_join_and_leave_a_public_room(client_for, general_room, bob):
    api = client_for(bob)
    joined = api.post("/api/chat/rooms/general/join/")
    assert joined.status_code == 200
    assert joined.json()["role"] == "member"
    assert api.post("/api/chat/rooms/general/join/").status_code == 200  # idempotent
    assert ChatParticipant.objects.filter(room=general_room, user=bob).count() == 1
    assert api.post("/api/chat/rooms/general/leave/").status_code == 204
    assert not ChatParticipant.objects.filter(room=general_room, user=bob).exists()


def test_alices_private_room_is_a_404_for_bob_everywhere(
    client_for, bob, alice, private_room, post
):
    post(private_room, alice, "secret")
    api = client_for(bob)
    base = f"/api/chat/rooms/{private_room.slug}/"
    assert api.get(base).status_code == 404
    assert api.post(base + "join/").status_code == 404
    assert api.post(base + "leave/").status_code == 404
    assert api.get(base + "messages/").status_code == 404
    assert api.get(base + "unread/").status_code == 404
    assert api.post(base + "read/").status_code == 404
    assert not ChatParticipant.objects.filter(room=private_room, user=bob).exists()
    # The same 404 as for a room that does not exist: nothing confirms the room is there.
    assert api.get("/api/chat/rooms/no-such-room/").json() == api.get(base).json()


def test_message_history_pages_back_with_before(client_for, general_room, alice, bob, post):
    ids = [post(general_room, alice, f"m{n}").id for n in range(5)]
    api = client_for(bob)  # a public room's history is readable without joining
    first = api.get("/api/chat/rooms/general/messages/?limit=2").json()
    assert [m["id"] for m in first["results"]] == ids[3:]
    assert first["has_more"] is True
    message = first["results"][-1]
    assert message["author"] == {"id": alice.id, "username": "alice"}
    assert message["room"] == "general"
    assert message["text"] == "m4"
    assert message["edited_at"] is None
    assert message["created_at"].endswith("Z")

    older = api.get(f"/api/chat/rooms/general/messages/?before={ids[3]}&limit=2").json()
    assert [m["id"] for m in older["results"]] == ids[1:3]
    newer = api.get(f"/api/chat/rooms/general/messages/?after={ids[1]}").json()
    assert [m["id"] for m in newer["results"]] == ids[2:]
    assert newer["has_more"] is False


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("before=-1", "before"),
        ("after=x", "after"),
        ("before=3&after=1", "non_field_errors"),
        ("before=99999999999999999999999", "before"),
    ],
)
def test_bad_history_parameters_are_a_400(client_for, general_room, bob, query, field):
    response = client_for(bob).get(f"/api/chat/rooms/general/messages/?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_a_deleted_users_messages_show_no_author(client_for, general_room, alice, bob, post):
    post(general_room, bob, "bye")
    bob.delete()
    results = client_for(alice).get("/api/chat/rooms/general/messages/").json()["results"]
    assert results[0]["text"] == "bye"
    assert results[0]["author"] is None


def test_unread_count_and_mark_read(client_for, general_room, alice, bob, post):
    api = client_for(bob)
    assert api.get("/api/chat/rooms/general/unread/").status_code == 403  # join first
    api.post("/api/chat/rooms/general/join/")
    first = post(general_room, alice, "one")
    post(general_room, alice, "two")
    assert api.get("/api/chat/rooms/general/unread/").json() == {
        "room": "general",
        "unread_count": 2,
        "last_read_message_id": None,
    }
    marked = api.post("/api/chat/rooms/general/read/", {"message_id": first.id}, format="json")
    assert marked.json()["unread_count"] == 1
    listed = api.get("/api/chat/rooms/").json()["results"]
    assert listed[0]["unread_count"] == 1
    assert api.post("/api/chat/rooms/general/read/").json()["unread_count"] == 0


def test_marking_read_a_message_of_another_room_is_a_400(
    client_for, general_room, alice, private_room, post
):
    client_for(alice).post("/api/chat/rooms/general/join/")
    secret = post(private_room, alice, "secret")
    response = client_for(alice).post(
        "/api/chat/rooms/general/read/", {"message_id": secret.id}, format="json"
    )
    assert response.status_code == 400
    assert "message_id" in response.json()


def test_a_room_named_like_general_does_not_take_its_slug(client_for, general_room, alice):
    response = client_for(alice).post("/api/chat/rooms/", {"name": "General"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["slug"]
    assert list(ChatRoom.objects.filter(name="General")) == [general_room]
