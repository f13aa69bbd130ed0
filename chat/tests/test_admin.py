"""The admin pages operators use for chat moderation."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(client, django_user_model):
    staff = django_user_model.objects.create_superuser(username="root", password="root-pass-123")
    client.force_login(staff)
    return client


def test_messages_are_searchable_by_text_and_filterable_by_room(
    admin_client_logged_in, general, alice, private_room, post
):
    post(general, alice, "the deploy is green")
    post(private_room, alice, "lunch?")
    found = admin_client_logged_in.get("/admin/chat/message/", {"q": "deploy"})
    assert found.status_code == 200
    assert b"the deploy is green" in found.content
    assert b"lunch?" not in found.content
    filtered = admin_client_logged_in.get("/admin/chat/message/", {"room__id__exact": general.id})
    assert b"the deploy is green" in filtered.content
    assert b"lunch?" not in filtered.content


def test_room_pages_show_participants(admin_client_logged_in, private_room):
    assert admin_client_logged_in.get("/admin/chat/chatroom/", {"q": "den"}).status_code == 200
    page = admin_client_logged_in.get(f"/admin/chat/chatroom/{private_room.id}/change/")
    assert page.status_code == 200
    assert b"alice" in page.content
