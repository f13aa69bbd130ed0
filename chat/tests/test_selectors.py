"""Chat reads: visibility, history pages, and the index they rely on."""

from __future__ import annotations

import pytest
from django.db import connection
from django.http import Http404

from chat import selectors, services
from chat.models import Message

pytestmark = pytest.mark.django_db


def test_history_on_subscribe_is_the_last_20_oldest_first(general_room, alice, post):
    texts = [f"message {n}" for n in range(25)]
    for text in texts:
        post(general_room, alice, text)
    latest = selectors.chat_message_latest(room=general_room)
    assert [m.text for m in latest] == texts[5:]


def test_pages_walk_back_and_forth_by_id(general_room, alice, post):
    ids = [post(general_room, alice, f"m{n}").id for n in range(7)]

    newest, more = selectors.chat_message_page(room=general_room, limit=3)
    assert [m.id for m in newest] == ids[4:]
    assert more is True
    older, more = selectors.chat_message_page(room=general_room, before=newest[0].id, limit=3)
    assert [m.id for m in older] == ids[1:4]
    assert more is True
    oldest, more = selectors.chat_message_page(room=general_room, before=older[0].id, limit=3)
    assert [m.id for m in oldest] == ids[:1]
    assert more is False

    newer, more = selectors.chat_message_page(room=general_room, after=ids[0], limit=4)
    assert [m.id for m in newer] == ids[1:5]
    assert more is True
    rest, more = selectors.chat_message_page(room=general_room, after=newer[-1].id, limit=4)
    assert [m.id for m in rest] == ids[5:]
    assert more is False


def test_pages_never_mix_rooms(general_room, alice, private_room, post):
    post(private_room, alice, "secret")
    post(general_room, alice, "hello")
    page, _ = selectors.chat_message_page(room=general_room)
    assert [m.text for m in page] == ["hello"]


def test_bob_sees_public_rooms_and_his_own_but_not_alices_private_room(
    general_room, alice, bob, private_room
):
    bobs_room = services.chat_room_create(creator=bob, name="Bob's", is_public=False)
    visible = {room.slug for room in selectors.chat_room_list_for(user=bob)}
    assert visible == {"general", bobs_room.slug}
    with pytest.raises(Http404):
        selectors.chat_room_get_for(user=bob, slug=private_room.slug)
    assert selectors.chat_room_get_for(user=alice, slug=private_room.slug).role == "owner"


def test_room_list_carries_role_and_unread_for_participants_only(general_room, alice, bob, post):
    post(general_room, alice, "one")
    post(general_room, alice, "two")
    bobs_view = selectors.chat_room_get_for(user=bob, slug="general")
    assert (bobs_view.role, bobs_view.unread_count) == (None, None)
    services.chat_room_join(room=general_room, user=bob)
    bobs_view = selectors.chat_room_get_for(user=bob, slug="general")
    assert (bobs_view.role, bobs_view.unread_count) == ("member", 2)
    alices_view = selectors.chat_room_get_for(user=alice, slug="general")
    assert alices_view.unread_count == 0  # her own messages


def test_bob_cannot_fetch_a_message_of_alices_private_room(alice, bob, private_room, post):
    secret = post(private_room, alice, "secret")
    with pytest.raises(Http404):
        selectors.chat_message_get_for(user=bob, message_id=secret.id)
    assert selectors.chat_message_get_for(user=alice, message_id=secret.id) == secret


def _plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        # Tiny test tables make a sequential (or bitmap) scan plus sort cheapest; forbid
        # them to see what the planner does at production sizes, where the plan that reads
        # only `limit` index entries wins.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_latest_and_after_queries_use_the_room_id_index(general_room, alice, post):
    post(general_room, alice, "hi")
    messages = Message.objects.filter(room=general_room)
    latest = _plan(messages.order_by("-id")[:20])
    after = _plan(messages.filter(id__gt=1).order_by("id")[:50])
    assert "chat_message_room_id_idx" in latest
    assert "Backward" in latest  # the same (room, id) btree, read newest first
    assert "chat_message_room_id_idx" in after
    assert "Sort" not in latest and "Sort" not in after
