"""Every write to chat data: rooms, membership, messages, read marks, typing.

The REST API and the WebSocket commands (chat/ws.py) both call these, so the rules
(who may post, edit, read) live here once. Broadcasts to a room's Channels group run in
transaction.on_commit: nobody hears of a message that was rolled back.

Errors: Django's ValidationError (bad input), PermissionDenied (not allowed) and Http404
(not visible to this user). The REST exception handler and ws.py map them to 400/403/404
and to `error` frames `invalid`/`forbidden`/`not_found`.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone
from django.utils.text import slugify

from chat import selectors
from chat.models import ChatParticipant, ChatRoom, Message, ParticipantRole, RoomKind
from notifications import protocol, push

logger = logging.getLogger("chat")


# --- Wire shapes and the room group --------------------------------------------------------


def room_group(room_id: int) -> str:
    """The Channels group of every socket subscribed to a room (ASCII, < 100 chars).

    Built from the database id only, never from client input, so a slug can never smuggle
    characters a channel layer refuses.
    """
    return f"chat.{int(room_id)}"


def chat_user_data(user: AbstractBaseUser | None) -> dict[str, Any] | None:
    """{id, username}, or None for a deleted user (clients show "deleted user")."""
    if user is None:
        return None
    return {"id": user.pk, "username": user.get_username()}


def chat_message_data(message: Message, *, room_slug: str | None = None) -> dict[str, Any]:
    """One message as the protocol carries it (docs/chat.md: {id, room, author, text,
    created_at, edited_at}). Pass room_slug to spare a query when the room is known."""
    return {
        "id": message.id,
        "room": room_slug if room_slug is not None else message.room.slug,
        "author": chat_user_data(message.author),
        "text": message.text,
        "created_at": protocol.format_ts(message.created_at),
        "edited_at": protocol.format_ts(message.edited_at) if message.edited_at else None,
    }


def _broadcast_rollback_unsafe(
    *, room_id: int, frame: dict[str, Any], reply_to: str | None = None, ref: Any = None
) -> None:
    """Send a frame to every socket subscribed to the room, now.

    Only call after commit. The consumer forwards `frame`, adding `ref` on the socket whose
    channel is `reply_to` (the sender's), so the sender's own copy doubles as its ack. A
    failure is logged and swallowed: the message is stored and history will show it.
    Through notifications.push, which keeps one Redis client per process (no thread and
    event loop per call, as async_to_sync(group_send) would make).
    """
    push.group_send_now(
        [
            (
                room_group(room_id),
                {"type": "event.push", "frame": frame, "reply_to": reply_to, "ref": ref},
            )
        ],
        what=f"chat room {room_id}",
    )


def _broadcast_on_commit(
    *, room_id: int, frame: dict[str, Any], reply_to: str | None, ref: Any
) -> None:
    transaction.on_commit(
        lambda: _broadcast_rollback_unsafe(room_id=room_id, frame=frame, reply_to=reply_to, ref=ref)
    )


# A channel-layer message, not a frame: "check that you may still read this room". Sent
# after commit to the sockets that may have lost a room: the user's (left, removed) or the
# room's (turned private, deleted). Each socket subscribed to the room re-reads whether its
# user may still read it (chat.ws.access_check) and, if not, drops the subscription and
# tells its client (`chat.unsubscribed`). A check rather than a verdict: the socket decides
# on what is committed when it handles the message, so a re-add or a second change in
# between cannot leave it wrong, and a room turned private is kept by its members.
ACCESS_CHECK = "chat.access.check"


def _access_check_on_commit(*, group: str, room_id: int, slug: str, reason: str) -> None:
    message = {"type": ACCESS_CHECK, "room_id": room_id, "room": slug, "reason": reason}
    transaction.on_commit(
        lambda: push.group_send_now([(group, message)], what=f"{group} (chat access check)")
    )


def _room_added_on_commit(*, user_ids: list[int], slug: str, reason: str) -> None:
    """Tell each user's sockets, after commit, that they are in a room they did not ask to
    join from this page (`chat.room.added` {room, reason}): the page re-reads its room list
    and follows the room. Ephemeral: a page that missed it sees the room at its next read."""
    frame = protocol.envelope(protocol.CHAT_ROOM_ADDED, {"room": slug, "reason": reason})
    messages = [
        (protocol.user_group(user_id), {"type": "event.push", "frame": frame})
        for user_id in user_ids
    ]
    transaction.on_commit(lambda: push.group_send_now(messages, what=f"room {slug} added"))


# --- Rooms and membership ------------------------------------------------------------------


def chat_room_create(
    *, creator: AbstractBaseUser, name: str, slug: str | None = None, is_public: bool = True
) -> ChatRoom:
    """A new room with its creator as owner. The slug defaults to the slugified name, or
    to `room-<6 hex digits>` when the name has no ASCII letter or digit ("Задачи", "!!!"):
    slugs go in URLs, which take ASCII only."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "A room needs a name."})
    if slug:
        slug = slugify(slug)[:50].strip("-")
        if not slug:
            raise ValidationError({"slug": "Give a slug with a letter or digit in it."})
    else:
        slug = slugify(name)[:50].strip("-") or f"room-{secrets.token_hex(3)}"
    if slug.startswith("dm-"):
        # Direct rooms' slugs (chat_direct_open): a room taking one would block that pair.
        raise ValidationError({"slug": "Slugs starting with 'dm-' are for direct messages."})
    try:
        with transaction.atomic():
            room = ChatRoom.objects.create(
                name=name, slug=slug, is_public=is_public, created_by=creator
            )
            ChatParticipant.objects.create(room=room, user=creator, role=ParticipantRole.OWNER)
    except IntegrityError as exc:
        # The unique slug is the only constraint a fresh room can break; checking first
        # would race with a concurrent create of the same slug.
        raise ValidationError({"slug": f"A room with slug {slug!r} already exists."}) from exc
    return room


def chat_room_join(*, room: ChatRoom, user: AbstractBaseUser) -> ChatParticipant:
    """Make the user a participant; idempotent. A private room takes only its members
    (this service never adds anyone to one), so joining it is refused."""
    participant = selectors.chat_participant_get(room=room, user=user)
    if participant is not None:
        return participant
    if not room.is_public:
        raise PermissionDenied("This room is private.")
    # ON CONFLICT DO NOTHING: two tabs subscribing at once must not fail on the unique key.
    ChatParticipant.objects.bulk_create(
        [ChatParticipant(room=room, user=user, role=ParticipantRole.MEMBER)],
        ignore_conflicts=True,
    )
    return ChatParticipant.objects.get(room=room, user=user)


def _user_by_username(username: Any) -> AbstractBaseUser:
    """An active user by exact username, or Http404 (a 404 like every other name that
    points at nothing, e.g. a room slug)."""
    user_model = get_user_model()
    user = None
    if isinstance(username, str) and username:
        user = (
            user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username})
            .filter(is_active=True)
            .first()
        )
    if user is None:
        raise Http404(f"No user {username!r}.")
    return user


def chat_room_invite(
    *, room: ChatRoom, by: AbstractBaseUser, username: Any
) -> tuple[ChatParticipant, bool]:
    """Add a user to a room as a member, on the word of one of its participants.

    Rules (docs/chat.md, "Invites"): any participant, owner or member, may invite into a
    room they are in, public or private; a direct room takes nobody else. Idempotent:
    inviting a participant changes nothing (returns it with False). The invitee's sockets
    hear `chat.room.added` after commit; nothing asks them to accept (a private room's
    members vouch for whom they add, and anyone may leave again).
    """
    if room.kind == RoomKind.DIRECT:
        raise PermissionDenied("Nobody can be invited into direct messages.")
    if selectors.chat_participant_get(room=room, user=by) is None:
        raise PermissionDenied("Only the room's participants can invite.")
    invitee = _user_by_username(username)
    existing = selectors.chat_participant_get(room=room, user=invitee)
    if existing is not None:
        return existing, False
    # ON CONFLICT DO NOTHING: an invite racing with a join or another invite is a no-op.
    ChatParticipant.objects.bulk_create(
        [ChatParticipant(room=room, user=invitee, role=ParticipantRole.MEMBER)],
        ignore_conflicts=True,
    )
    _room_added_on_commit(user_ids=[invitee.pk], slug=room.slug, reason="invited")
    return ChatParticipant.objects.get(room=room, user=invitee), True


def direct_key(user_a_id: int, user_b_id: int) -> str:
    low, high = sorted((int(user_a_id), int(user_b_id)))
    return f"{low}:{high}"


def chat_direct_open(*, user: AbstractBaseUser, username: Any) -> tuple[ChatRoom, bool]:
    """The direct room of `user` and the user named `username`: the existing one, or a new
    one (True). Private, kind `direct`, both of them participants (a side that had left
    is back). The unique direct_key makes concurrent starts, from either side, end in the
    same room. Both users' sockets hear `chat.room.added` when anything changed."""
    other = _user_by_username(username)
    if other.pk == user.pk:
        raise ValidationError({"username": "Direct messages need another user."})
    key = direct_key(user.pk, other.pk)
    created = False
    room = ChatRoom.objects.filter(direct_key=key).first()
    if room is None:
        try:
            with transaction.atomic():
                room = ChatRoom.objects.create(
                    name=f"{user.get_username()} and {other.get_username()}"[:100],
                    slug=f"dm-{key.replace(':', '-')}",
                    is_public=False,
                    kind=RoomKind.DIRECT,
                    direct_key=key,
                    created_by=user,
                )
                created = True
        except IntegrityError:
            # The other side (or another tab) created it first.
            room = ChatRoom.objects.get(direct_key=key)
    present = set(ChatParticipant.objects.filter(room=room).values_list("user_id", flat=True))
    missing = [member.pk for member in (user, other) if member.pk not in present]
    ChatParticipant.objects.bulk_create(
        [ChatParticipant(room=room, user_id=pk, role=ParticipantRole.MEMBER) for pk in missing],
        ignore_conflicts=True,
    )
    if created or missing:
        _room_added_on_commit(user_ids=[user.pk, other.pk], slug=room.slug, reason="direct")
    return room, created


def chat_room_leave(*, room: ChatRoom, user: AbstractBaseUser) -> None:
    """Stop being a participant (idempotent). Messages stay. The user's sockets subscribed
    to a private room lose it at once (`chat.unsubscribed`); a public room they may still
    read, so they keep it (docs/chat.md)."""
    deleted, _ = ChatParticipant.objects.filter(room=room, user=user).delete()
    if deleted:
        _access_check_on_commit(
            group=protocol.user_group(user.pk), room_id=room.id, slug=room.slug, reason="left"
        )


def chat_room_mark_read(
    *, room: ChatRoom, user: AbstractBaseUser, message_id: int | None = None
) -> ChatParticipant:
    """Move the user's read watermark to `message_id` (default: the newest message).

    The watermark only moves forward: one conditional UPDATE, so a late request from a
    stale tab cannot mark newer messages unread again.
    """
    participant = selectors.chat_participant_get(room=room, user=user)
    if participant is None:
        raise PermissionDenied("Join the room first.")
    if message_id is None:
        message_id = (
            Message.objects.filter(room=room).order_by("-id").values_list("id", flat=True).first()
        )
        if message_id is None:
            return participant
    elif not Message.objects.filter(room=room, pk=message_id).exists():
        raise ValidationError({"message_id": "No such message in this room."})
    ChatParticipant.objects.filter(pk=participant.pk).filter(
        Q(last_read_message__isnull=True) | Q(last_read_message_id__lt=message_id)
    ).update(last_read_message_id=message_id)
    participant.refresh_from_db()
    return participant


# --- Messages ------------------------------------------------------------------------------


def _clean_text(text: Any) -> str:
    if not isinstance(text, str):
        raise ValidationError({"text": "Text must be a string."})
    text = text.strip()
    if not text:
        raise ValidationError({"text": "A message cannot be empty."})
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
    if "\x00" in text:
        raise ValidationError({"text": "A message cannot contain NUL characters."})
    limit = selectors.max_message_chars()
    if len(text) > limit:
        raise ValidationError({"text": f"A message is at most {limit} characters."})
    return text


def _require_active(user: AbstractBaseUser) -> None:
    """A WebSocket's user was loaded at connect: a post or edit sent after the account's
    deactivation committed, before the socket's close arrives (taskhub/accounts.py),
    must not be stored. One primary-key read."""
    # The user model's manager, not type(user)'s: a socket signed in by its session cookie
    # holds a lazy wrapper (channels' UserLazyObject), whose type has no manager.
    if not get_user_model()._default_manager.filter(pk=user.pk, is_active=True).exists():
        raise PermissionDenied("This account is no longer active.")


def chat_message_post(
    *,
    room: ChatRoom,
    author: AbstractBaseUser,
    text: Any,
    reply_to: str | None = None,
    ref: Any = None,
) -> Message:
    """Store a message from a participant and broadcast `chat.message.posted` after commit.

    reply_to/ref: the poster's channel and request ref, so its own copy carries the ref.
    """
    text = _clean_text(text)
    _require_active(author)
    if selectors.chat_participant_get(room=room, user=author) is None:
        raise PermissionDenied("Join the room before posting.")
    with transaction.atomic():
        message = Message.objects.create(room=room, author=author, text=text)
        frame = protocol.envelope(
            protocol.CHAT_MESSAGE_POSTED,
            chat_message_data(message, room_slug=room.slug),
            ts=message.created_at,
        )
        _broadcast_on_commit(room_id=room.id, frame=frame, reply_to=reply_to, ref=ref)
    return message


def chat_message_edit(
    *,
    message: Message,
    editor: AbstractBaseUser,
    text: Any,
    reply_to: str | None = None,
    ref: Any = None,
) -> Message:
    """Replace a message's text (its author only), stamp edited_at, broadcast
    `chat.message.edited` after commit."""
    text = _clean_text(text)
    if message.author_id is None or message.author_id != editor.pk:
        raise PermissionDenied("Only the author can edit a message.")
    _require_active(editor)
    with transaction.atomic():
        # The row lock orders concurrent edits: the last to commit is the last broadcast.
        locked = Message.objects.select_for_update().get(pk=message.pk)
        locked.text = text
        locked.edited_at = timezone.now()
        locked.save(update_fields=["text", "edited_at"])
        room = message.room
        locked.author = editor
        frame = protocol.envelope(
            protocol.CHAT_MESSAGE_EDITED,
            chat_message_data(locked, room_slug=room.slug),
            ts=locked.edited_at,
        )
        _broadcast_on_commit(room_id=room.id, frame=frame, reply_to=reply_to, ref=ref)
    return locked


def chat_message_delete_own(*, message: Message, user: AbstractBaseUser) -> None:
    """Delete a message as its author and tell the room (`chat.message.deleted` {id, room},
    the moderator's frame) after commit. Someone else's message is PermissionDenied."""
    if message.author_id is None or message.author_id != user.pk:
        raise PermissionDenied("Only the author can delete a message.")
    _require_active(user)
    with transaction.atomic():
        deleted, _ = Message.objects.filter(pk=message.pk).delete()
        if deleted:
            frame = protocol.envelope(
                protocol.CHAT_MESSAGE_DELETED, {"id": message.pk, "room": message.room.slug}
            )
            _broadcast_on_commit(room_id=message.room_id, frame=frame, reply_to=None, ref=None)


# --- Moderation (the admin, chat/admin.py) ---------------------------------------------------
#
# Staff act on anyone's rooms and messages, so none of the participant rules above apply;
# what users see of it is broadcast like their own actions.


def chat_text_validate(text: Any) -> str:
    """The text as it would be stored (trimmed), or ValidationError({"text": ...}): the
    rules of a post or an edit, for a form that checks before it saves."""
    return _clean_text(text)


def chat_message_moderate(*, message_id: int, text: Any) -> Message:
    """Replace a message's text as staff: stored with edited_at stamped, and broadcast to
    the room as `chat.message.edited`, exactly like its author's edit."""
    text = _clean_text(text)
    with transaction.atomic():
        message = Message.objects.select_for_update().select_related("room").get(pk=message_id)
        if message.text == text:
            return message
        message.text = text
        message.edited_at = timezone.now()
        message.save(update_fields=["text", "edited_at"])
        logger.info("chat message %s edited by staff", message.pk)
        frame = protocol.envelope(
            protocol.CHAT_MESSAGE_EDITED, chat_message_data(message), ts=message.edited_at
        )
        _broadcast_on_commit(room_id=message.room_id, frame=frame, reply_to=None, ref=None)
    return message


def chat_message_delete(*, message_id: int) -> bool:
    """Delete a message as staff and tell the room (`chat.message.deleted` {id, room}) after
    commit; False if it was already gone. Read marks pointing at it stay valid: they are
    compared by id only (chat/models.py)."""
    with transaction.atomic():
        message = (
            Message.objects.select_for_update().select_related("room").filter(pk=message_id).first()
        )
        if message is None:
            return False
        room = message.room
        message.delete()
        logger.info("chat message %s in %s deleted by staff", message_id, room.slug)
        frame = protocol.envelope(
            protocol.CHAT_MESSAGE_DELETED, {"id": message_id, "room": room.slug}
        )
        _broadcast_on_commit(room_id=room.id, frame=frame, reply_to=None, ref=None)
    return True


def chat_room_update(*, room_id: int, name: str, is_public: bool) -> ChatRoom:
    """Rename a room or change who may join it, as staff. The slug stays: it is the room's
    name on the wire, which open sockets and clients hold. No room frame is broadcast;
    clients read rooms over REST. Making a room private keeps its participants in it; the
    sockets of anyone else subscribed to it (a user who left it while it was public) lose
    it at once (`chat.unsubscribed`)."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "A room needs a name."})
    with transaction.atomic():
        room = ChatRoom.objects.select_for_update().get(pk=room_id)
        turns_private = room.is_public and not is_public
        room.name, room.is_public = name, is_public
        room.save(update_fields=["name", "is_public"])
        if turns_private:
            _access_check_on_commit(
                group=room_group(room.id), room_id=room.id, slug=room.slug, reason="private"
            )
    return room


def chat_room_delete(*, room_id: int) -> bool:
    """Delete a room with its participants and messages, as staff; False if already gone.
    Sockets subscribed to it are told (`chat.unsubscribed`, reason `deleted`); a later
    subscribe is `not_found`."""
    with transaction.atomic():
        room = ChatRoom.objects.select_for_update().filter(pk=room_id).first()
        if room is None:
            return False
        slug = room.slug
        room.delete()
        logger.info("chat room %s deleted by staff", room_id)
        _access_check_on_commit(
            group=room_group(room_id), room_id=room_id, slug=slug, reason="deleted"
        )
    return True


def chat_room_member_set(*, room: ChatRoom, user_id: int, role: str) -> ChatParticipant:
    """Make a user a participant with `role`, as staff: the one way into a private room
    (docs/chat.md). Idempotent; an existing participant gets the role."""
    if role not in ParticipantRole.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    participant, _ = ChatParticipant.objects.update_or_create(
        room=room, user_id=user_id, defaults={"role": role}
    )
    return participant


def chat_room_member_remove(*, room: ChatRoom, user_id: int) -> None:
    """End a participation, as staff (idempotent). As with a user's own leave, the user's
    sockets subscribed to a private room lose it at once (`chat.unsubscribed`)."""
    deleted, _ = ChatParticipant.objects.filter(room=room, user_id=user_id).delete()
    if deleted:
        _access_check_on_commit(
            group=protocol.user_group(user_id), room_id=room.id, slug=room.slug, reason="removed"
        )


def typing_interval() -> float:
    return settings.TASKHUB_CHAT_TYPING_INTERVAL


def chat_typing_send(*, room: ChatRoom, user: AbstractBaseUser) -> bool:
    """Tell the room the user is typing: ephemeral, at most one per user per room per
    CHAT_TYPING_INTERVAL seconds (default 2). Returns False when the hint was dropped.

    The limit is a Redis SET NX with expiry (cache.add), so it holds across the user's
    tabs and across web processes. Extra hints are dropped silently: a keystroke-rate
    error stream would cost more than the hint it refuses.
    """
    if selectors.chat_participant_get(room=room, user=user) is None:
        raise PermissionDenied("Join the room first.")
    if not cache.add(f"chat:typing:{room.id}:{user.pk}", 1, timeout=typing_interval()):
        return False
    frame = protocol.envelope(
        protocol.CHAT_TYPING, {"room": room.slug, "user": chat_user_data(user)}
    )
    # Sent at once: a typing hint reports no write, so there is no commit to wait for.
    _broadcast_rollback_unsafe(room_id=room.id, frame=frame)
    return True
