"""The admin pages operators use for chat moderation."""

from __future__ import annotations

import pytest

from chat import services

pytestmark = pytest.mark.django_db


def test_messages_are_searchable_by_text_and_filterable_by_room(
    operator, general_room, alice, private_room, post
):
    post(general_room, alice, "the deploy is green")
    post(private_room, alice, "lunch?")
    found = operator.get("/admin/chat/message/", {"q": "deploy"})
    assert found.status_code == 200
    assert b"the deploy is green" in found.content
    assert b"lunch?" not in found.content
    filtered = operator.get("/admin/chat/message/", {"room__id__exact": general_room.id})
    assert b"the deploy is green" in filtered.content
    assert b"lunch?" not in filtered.content


def test_room_pages_show_the_rooms_participants(operator, alice, bob, general_room, private_room):
    services.chat_room_join(room=general_room, user=bob)  # another room's participant
    listed = operator.get("/admin/chat/chatroom/", {"q": "den"})
    assert list(listed.context["cl"].result_list) == [private_room]
    page = operator.get(f"/admin/chat/chatroom/{private_room.id}/change/")
    assert page.status_code == 200
    [participants] = page.context["inline_admin_formsets"]
    shown = [(form.instance.user, form.instance.role) for form in participants.formset.forms]
    assert shown == [(alice, "owner")]
