"""Every read of chat data, scoped to the user asking.

Visibility lives here once: a user sees public rooms and the private rooms they are a
participant of. Anything else is "not found", so no endpoint confirms that a private room
exists.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import (
    Case,
    CharField,
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    When,
)
from django.db.models.functions import Coalesce
from django.http import Http404

from chat.models import ChatParticipant, ChatRoom, Message, RoomKind

HISTORY_ON_SUBSCRIBE = 20
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 100


def max_message_chars() -> int:
    return settings.TASKHUB_CHAT_MAX_MESSAGE_CHARS


def _visible_q(user: AbstractBaseUser) -> Q:
    return Q(is_public=True) | Exists(
        ChatParticipant.objects.filter(room=OuterRef("pk"), user=user)
    )


def chat_room_list_for(*, user: AbstractBaseUser) -> QuerySet[ChatRoom]:
    """Rooms the user may see, each annotated with the user's `role` (None: not a
    participant) and `unread_count` (None for non-participants: nothing to be behind on)."""
    participation = ChatParticipant.objects.filter(room=OuterRef("pk"), user=user)
    peers = ChatParticipant.objects.filter(room=OuterRef("pk")).exclude(user=user).order_by("id")
    unread = (
        Message.objects.filter(room=OuterRef("pk"), id__gt=Coalesce(OuterRef("last_read_id"), 0))
        .exclude(author=user)
        .order_by()
        .values("room")
        .annotate(n=Count("id"))
        .values("n")
    )
    return (
        ChatRoom.objects.filter(_visible_q(user))
        .select_related("created_by")
        .annotate(
            role=Subquery(participation.values("role")[:1]),
            last_read_id=Subquery(participation.values("last_read_message_id")[:1]),
            # The newest message id as read: a client counts what arrives after it on top
            # of unread_count, each message once (the page's live unread counts).
            last_message_id=Subquery(
                Message.objects.filter(room=OuterRef("pk")).order_by("-id").values("id")[:1]
            ),
            # A direct room's other participant (null elsewhere, and once they left).
            peer_id=Case(
                When(kind=RoomKind.DIRECT, then=Subquery(peers.values("user_id")[:1])),
                default=None,
                output_field=IntegerField(),
            ),
            peer_username=Case(
                When(kind=RoomKind.DIRECT, then=Subquery(peers.values("user__username")[:1])),
                default=None,
                output_field=CharField(),
            ),
        )
        .annotate(
            unread_count=Case(
                # Coalesce: the count subquery yields no row (NULL) when nothing is unread.
                When(role__isnull=False, then=Coalesce(Subquery(unread), 0)),
                default=None,
                output_field=IntegerField(),
            )
        )
        .order_by("name", "id")
    )


def chat_room_get_for(*, user: AbstractBaseUser, slug: str) -> ChatRoom:
    """A room the user may see (annotated like chat_room_list_for), or Http404."""
    room = chat_room_list_for(user=user).filter(slug=slug).first()
    if room is None:
        raise Http404("No such room.")
    return room


def chat_room_find(*, slug: str) -> ChatRoom | None:
    """A room by slug with no visibility check: for callers that tell "no such room" and
    "not allowed" apart (posting to a public room you have not joined is `forbidden`; a
    private room you are not in stays `not_found`, as if it did not exist: docs/chat.md)."""
    return ChatRoom.objects.filter(slug=slug).first()


def chat_participant_get(*, room: ChatRoom, user: AbstractBaseUser) -> ChatParticipant | None:
    return ChatParticipant.objects.filter(room=room, user=user).first()


def chat_room_is_readable_by(*, room: ChatRoom, user: AbstractBaseUser) -> bool:
    return room.is_public or ChatParticipant.objects.filter(room=room, user=user).exists()


def chat_rooms_readable(*, pairs: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Of (user id, room id) pairs, those whose room still exists and whose user may read
    it: two queries however many pairs (every socket of a web process, after it lost
    Redis: chat.ws.resend_history)."""
    pairs = set(pairs)
    room_ids = {room_id for _, room_id in pairs}
    public = dict(ChatRoom.objects.filter(pk__in=room_ids).values_list("pk", "is_public"))
    members = set(
        ChatParticipant.objects.filter(
            room_id__in=room_ids, user_id__in={user_id for user_id, _ in pairs}
        ).values_list("user_id", "room_id")
    )
    return {
        (user_id, room_id)
        for user_id, room_id in pairs
        if room_id in public and (public[room_id] or (user_id, room_id) in members)
    }


def chat_room_id_is_readable_by(*, room_id: int, user: AbstractBaseUser) -> bool:
    """Whether the room still exists and the user may read it, as committed now (one
    query): a subscribed socket's check after a membership or visibility change."""
    return ChatRoom.objects.filter(_visible_q(user), pk=room_id).exists()


def chat_message_get_for(*, user: AbstractBaseUser, message_id: int) -> Message:
    """A message in a room the user may see, or Http404 (also for a private room's)."""
    if not 0 < message_id < 2**63:  # a URL's <int:> has no bound; bigint has
        raise Http404("No such message.")
    message = (
        Message.objects.select_related("room", "author")
        .filter(pk=message_id)
        .filter(
            Q(room__is_public=True)
            | Exists(ChatParticipant.objects.filter(room=OuterRef("room"), user=user))
        )
        .first()
    )
    if message is None:
        raise Http404("No such message.")
    return message


def chat_message_latest(*, room: ChatRoom, limit: int = HISTORY_ON_SUBSCRIBE) -> list[Message]:
    """The room's last `limit` messages, oldest first (what subscribe.chat sends)."""
    newest_first = list(
        Message.objects.select_related("author").filter(room=room).order_by("-id")[:limit]
    )
    return newest_first[::-1]


def chat_message_page(
    *,
    room: ChatRoom,
    before: int | None = None,
    after: int | None = None,
    limit: int = DEFAULT_PAGE_LIMIT,
) -> tuple[list[Message], bool]:
    """One page of history, oldest first, and whether more lie in the direction of travel.

    `before`: the `limit` messages just older than that id (scrolling back); `after`: the
    `limit` messages just newer (catching up); neither: the newest `limit`. Ids are the
    cursor: they only grow, so a page never repeats or skips a message that others post
    meanwhile (page numbers would).
    """
    limit = max(1, min(limit, MAX_PAGE_LIMIT))
    messages = Message.objects.select_related("author").filter(room=room)
    if after is not None:
        rows = list(messages.filter(id__gt=after).order_by("id")[: limit + 1])
        return rows[:limit], len(rows) > limit
    if before is not None:
        messages = messages.filter(id__lt=before)
    rows = list(messages.order_by("-id")[: limit + 1])
    return rows[:limit][::-1], len(rows) > limit


def chat_unread_count(*, participant: ChatParticipant) -> int:
    """Messages of the room after the participant's read watermark, not counting their own."""
    messages = Message.objects.filter(room_id=participant.room_id)
    if participant.last_read_message_id is not None:
        messages = messages.filter(id__gt=participant.last_read_message_id)
    return messages.exclude(author_id=participant.user_id).count()
