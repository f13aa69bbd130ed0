"""Chat moderation in the admin goes through chat.services: a room's open sockets hear of
an operator's edit or delete as they hear of a user's (docs/chat.md, "Admin")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from chat import services
from chat.models import ChatParticipant, ChatRoom, Message, ParticipantRole

pytestmark = pytest.mark.django_db


class RoomListener:
    """A channel in a room's group on the real channel layer, as a subscribed socket's
    consumer is; its calls run on a loop of its own (the layer's subscriptions belong to
    the loop that made them)."""

    def __init__(self, room: ChatRoom) -> None:
        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()
        self.group = services.room_group(room.id)
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.loop.run_until_complete(self.layer.group_add(self.group, self.channel))

    def frame(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next frame pushed to the room, or None after `timeout` s."""

        async def receive() -> dict[str, Any] | None:
            try:
                return (await asyncio.wait_for(self.layer.receive(self.channel), timeout))["frame"]
            except TimeoutError:
                return None

        return self.loop.run_until_complete(receive())

    def close(self) -> None:
        self.loop.run_until_complete(self.layer.group_discard(self.group, self.channel))
        self.loop.close()


@pytest.fixture
def room(alice) -> ChatRoom:
    return services.chat_room_create(creator=alice, name="Ops talk")


@pytest.fixture
def listener(room) -> Iterator[RoomListener]:
    listening = RoomListener(room)
    yield listening
    listening.close()


def test_an_operators_edit_is_broadcast_as_chat_message_edited(
    operator, alice, room, listener, django_capture_on_commit_callbacks
):
    message = services.chat_message_post(room=room, author=alice, text="my password is hunter2")

    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(
            f"/admin/chat/message/{message.pk}/change/", {"text": "[removed by a moderator]"}
        )

    assert response.status_code == 302, response.content.decode()[-2000:]
    message.refresh_from_db()
    assert (message.text, message.author_id) == ("[removed by a moderator]", alice.pk)
    assert message.edited_at is not None
    frame = listener.frame()  # alice's own post went out on no commit: a test transaction
    assert frame["type"] == "chat.message.edited"
    assert (frame["data"]["id"], frame["data"]["text"]) == (message.pk, "[removed by a moderator]")
    assert frame["data"]["author"] == {"id": alice.pk, "username": "alice"}


def test_an_operators_edit_follows_the_rules_of_a_users_edit(operator, alice, room):
    message = services.chat_message_post(room=room, author=alice, text="hello")

    too_long = "x" * (settings.TASKHUB_CHAT_MAX_MESSAGE_CHARS + 1)

    response = operator.post(f"/admin/chat/message/{message.pk}/change/", {"text": too_long})

    assert response.status_code == 200  # the form again, with the error on the field
    limit = settings.TASKHUB_CHAT_MAX_MESSAGE_CHARS
    assert f"A message is at most {limit} characters." in response.content.decode()
    message.refresh_from_db()
    assert (message.text, message.edited_at) == ("hello", None)


def test_an_operators_delete_is_broadcast_and_leaves_read_marks_alone(
    operator, alice, bob, room, listener, django_capture_on_commit_callbacks
):
    services.chat_room_join(room=room, user=bob)
    first = services.chat_message_post(room=room, author=alice, text="first")
    spam = services.chat_message_post(room=room, author=alice, text="spam")
    services.chat_room_mark_read(room=room, user=bob, message_id=spam.pk)

    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(f"/admin/chat/message/{spam.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert list(Message.objects.filter(room=room).values_list("pk", flat=True)) == [first.pk]
    frame = listener.frame()
    assert frame["type"] == "chat.message.deleted"
    assert frame["data"] == {"id": spam.pk, "room": room.slug}
    marker = ChatParticipant.objects.get(room=room, user=bob).last_read_message_id
    assert marker == spam.pk  # not reset to "everything unread"


def test_the_delete_action_broadcasts_each_deleted_message(
    operator, alice, room, listener, django_capture_on_commit_callbacks
):
    one = services.chat_message_post(room=room, author=alice, text="one")
    two = services.chat_message_post(room=room, author=alice, text="two")

    with django_capture_on_commit_callbacks(execute=True):
        operator.post(
            "/admin/chat/message/",
            {"action": "delete_selected", "_selected_action": [one.pk, two.pk], "post": "yes"},
        )

    assert not Message.objects.filter(room=room).exists()
    frames = [listener.frame(), listener.frame()]
    assert {(f["type"], f["data"]["id"]) for f in frames} == {
        ("chat.message.deleted", one.pk),
        ("chat.message.deleted", two.pk),
    }


def test_operators_cannot_write_a_message_in_someones_name(operator):
    assert operator.get("/admin/chat/message/add/").status_code == 403


def test_adding_a_private_room_with_members_goes_through_the_services(operator, alice, bob):
    response = operator.post(
        "/admin/chat/chatroom/add/",
        {
            "name": "Incident 42",
            "slug": "incident-42",
            "is_public": "",
            "created_by": alice.pk,
            "participants-TOTAL_FORMS": "1",
            "participants-INITIAL_FORMS": "0",
            "participants-0-user": bob.pk,
            "participants-0-role": "member",
        },
    )

    assert response.status_code == 302, response.content.decode()[-3000:]
    room = ChatRoom.objects.get(slug="incident-42")
    assert not room.is_public
    members = dict(room.participants.values_list("user__username", "role"))
    assert members == {"alice": ParticipantRole.OWNER, "bob": ParticipantRole.MEMBER}


def room_form(room: ChatRoom, rows: list[dict[str, Any]], **edits: Any) -> dict[str, Any]:
    """The room's change form as shown (its participants as inline rows), with edits."""
    participants = list(room.participants.order_by("pk"))
    form: dict[str, Any] = {
        "name": room.name,
        "is_public": "on" if room.is_public else "",
        "participants-TOTAL_FORMS": str(len(rows)),
        "participants-INITIAL_FORMS": str(len(participants)),
    }
    for index, row in enumerate(rows):
        for field, value in row.items():
            form[f"participants-{index}-{field}"] = value
        if index < len(participants):
            form[f"participants-{index}-id"] = participants[index].pk
            form[f"participants-{index}-room"] = room.pk
    form.update(edits)
    return form


def test_editing_a_room_renames_it_keeps_its_slug_and_edits_members(operator, alice, bob, room):
    carol = type(alice).objects.create_user("carol", password="carol-pass-123")
    services.chat_room_join(room=room, user=bob)  # rows: alice (owner), bob (member)

    response = operator.post(
        f"/admin/chat/chatroom/{room.pk}/change/",
        room_form(
            room,
            [
                {"user": alice.pk, "role": "owner"},
                {"user": bob.pk, "role": "member", "DELETE": "on"},
                {"user": carol.pk, "role": "owner"},
            ],
            name="Ops talk (archived)",
            slug="renamed",
        ),
    )

    assert response.status_code == 302, response.content.decode()[-3000:]
    room.refresh_from_db()
    assert (room.name, room.slug) == ("Ops talk (archived)", "ops-talk")
    members = dict(room.participants.values_list("user__username", "role"))
    assert members == {"alice": "owner", "carol": "owner"}


def test_deleting_a_room_deletes_its_members_and_messages(operator, alice, room):
    services.chat_message_post(room=room, author=alice, text="bye")

    response = operator.post(f"/admin/chat/chatroom/{room.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not ChatRoom.objects.filter(pk=room.pk).exists()
    assert not Message.objects.filter(room_id=room.pk).exists()
    assert not ChatParticipant.objects.filter(room_id=room.pk).exists()
