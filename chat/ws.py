"""The chat commands of the `/ws` connection.

notifications.consumers.EventConsumer owns the socket; chat.apps.ChatConfig.ready()
registers `handle` for the client types in COMMANDS (notifications.protocol's
CHAT_COMMANDS), so the consumer calls `await handle(consumer, message)`. This module
uses only the consumer's API: `user`, `channel_name`, `reply()`, `reply_error()`,
`join_group()`, `leave_group()`.
Rules live in chat.services/selectors; the database is reached through
database_sync_to_async, never the sync ORM on the event loop.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.http import Http404

from chat import selectors, services
from chat.models import ChatRoom
from notifications import protocol

SUBSCRIBE = protocol.CHAT_SUBSCRIBE
UNSUBSCRIBE = protocol.CHAT_UNSUBSCRIBE
POST = protocol.CHAT_MESSAGE_POST
EDIT = protocol.CHAT_MESSAGE_EDIT
TYPING = protocol.CHAT_TYPING
COMMANDS = protocol.CHAT_COMMANDS

_SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,50}\Z")

logger = logging.getLogger("chat")

# The rooms each socket is subscribed to, id -> slug. Weak keys: the entry goes with the
# consumer. The consumer leaves every group on disconnect itself; this answers "is this
# socket subscribed?" (the ack path of post/edit, unsubscribe-all) and "which histories
# does it need again?" (resend_history).
_subscriptions: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


class CommandError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _detail(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return " ".join(m for messages in exc.message_dict.values() for m in messages)
    return " ".join(exc.messages)


async def handle(consumer: Any, message: dict[str, Any]) -> None:
    """Run one chat command; every refusal is an `error` frame carrying the client's ref."""
    ref = message.get("ref")
    command = _HANDLERS.get(message.get("type"))  # type: ignore[arg-type]
    try:
        if command is None:
            raise CommandError("bad_request", "Unknown chat command.")
        await command(consumer, message, ref)
    except CommandError as exc:
        await consumer.reply_error(exc.code, exc.detail, ref=ref)
    except ValidationError as exc:
        await consumer.reply_error("invalid", _detail(exc), ref=ref)
    except PermissionDenied as exc:
        await consumer.reply_error("forbidden", str(exc) or "Not allowed.", ref=ref)
    except (Http404, ObjectDoesNotExist) as exc:
        await consumer.reply_error("not_found", str(exc) or "Not found.", ref=ref)


# --- Input -------------------------------------------------------------------------------


def _room_slug(message: dict[str, Any]) -> str:
    slug = message.get("room")
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise CommandError("bad_request", "`room` must be a room slug.")
    return slug


def _message_id(message: dict[str, Any]) -> int:
    value = message.get("message_id")
    # bool is an int in Python; `true` is not a message id.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise CommandError("bad_request", "`message_id` must be a positive integer.")
    return value


def _text(message: dict[str, Any]) -> str:
    text = message.get("text")
    if not isinstance(text, str):
        raise CommandError("bad_request", "`text` must be a string.")
    return text


# --- Database work (sync, run in a thread) -----------------------------------------------


def _room_for(user: Any, slug: str) -> ChatRoom:
    """The room, if the user may see it. A private room the user is not in answers exactly
    like a room that does not exist (docs/chat.md: never confirm what you may not see)."""
    room = selectors.chat_room_find(slug=slug)
    if room is None or not selectors.chat_room_is_readable_by(room=room, user=user):
        raise Http404("No such room.")
    return room


def _open_room(user: Any, slug: str) -> ChatRoom:
    """subscribe.chat: a public room makes the subscriber a participant; a private one
    takes members only (anyone else gets `not_found`, as for a room that does not exist)."""
    room = _room_for(user, slug)
    services.chat_room_join(room=room, user=user)
    return room


def _histories(slugs: list[str]) -> dict[str, list[dict[str, Any]]]:
    histories = {}
    for slug in slugs:
        room = selectors.chat_room_find(slug=slug)
        if room is not None:  # deleted meanwhile: nothing to show, nothing will come
            histories[slug] = _history(room)
    return histories


def _readable(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return selectors.chat_rooms_readable(pairs=pairs)


def _history(room: ChatRoom) -> list[dict[str, Any]]:
    return [
        services.chat_message_data(m, room_slug=room.slug)
        for m in selectors.chat_message_latest(room=room)
    ]


def _post(user: Any, slug: str, text: str, reply_to: str | None, ref: Any) -> tuple[int, dict]:
    room = _room_for(user, slug)
    message = services.chat_message_post(
        room=room, author=user, text=text, reply_to=reply_to, ref=ref
    )
    return room.id, services.chat_message_data(message, room_slug=room.slug)


def _edit(
    user: Any, message_id: int, text: str, reply_to: str | None, ref: Any
) -> tuple[int, dict]:
    message = selectors.chat_message_get_for(user=user, message_id=message_id)
    edited = services.chat_message_edit(
        message=message, editor=user, text=text, reply_to=reply_to, ref=ref
    )
    return message.room_id, services.chat_message_data(edited, room_slug=message.room.slug)


def _typing(user: Any, slug: str) -> None:
    services.chat_typing_send(room=_room_for(user, slug), user=user)


# --- Commands ----------------------------------------------------------------------------


async def _subscribe(consumer: Any, message: dict[str, Any], ref: Any) -> None:
    slug = _room_slug(message)
    room = await database_sync_to_async(_open_room)(consumer.user, slug)
    # Join the group before reading history: a message committed in between is then in
    # both (clients de-duplicate by id) rather than in neither.
    await consumer.join_group(services.room_group(room.id))
    _subscriptions.setdefault(consumer, {})[room.id] = room.slug
    messages = await database_sync_to_async(_history)(room)
    await consumer.reply(protocol.CHAT_HISTORY, {"room": room.slug, "messages": messages}, ref=ref)


async def _unsubscribe(consumer: Any, message: dict[str, Any], ref: Any) -> None:
    """Leave one room's stream (`room`), or every room this socket follows (no `room`).
    Membership stays; leaving a room is the REST API's job. No reply frame: the protocol
    defines none, and the client stops receiving the room's messages."""
    subscribed = _subscriptions.setdefault(consumer, {})
    if message.get("room") is None:
        room_ids = set(subscribed)
    else:
        room = await database_sync_to_async(_room_for)(consumer.user, _room_slug(message))
        room_ids = {room.id}
    for room_id in room_ids:
        await consumer.leave_group(services.room_group(room_id))
        subscribed.pop(room_id, None)


async def _post_message(consumer: Any, message: dict[str, Any], ref: Any) -> None:
    slug, text = _room_slug(message), _text(message)
    room_id, data = await database_sync_to_async(_post)(
        consumer.user, slug, text, consumer.channel_name, ref
    )
    await _ack_if_unsubscribed(consumer, room_id, protocol.CHAT_MESSAGE_POSTED, data, ref)


async def _edit_message(consumer: Any, message: dict[str, Any], ref: Any) -> None:
    message_id, text = _message_id(message), _text(message)
    room_id, data = await database_sync_to_async(_edit)(
        consumer.user, message_id, text, consumer.channel_name, ref
    )
    await _ack_if_unsubscribed(consumer, room_id, protocol.CHAT_MESSAGE_EDITED, data, ref)


async def _ack_if_unsubscribed(
    consumer: Any, room_id: int, type: str, data: dict[str, Any], ref: Any
) -> None:
    # A participant may post to a room this socket does not follow; the broadcast (which
    # carries the ref) then never reaches it, so it gets its copy directly instead.
    if room_id not in _subscriptions.get(consumer, ()):
        await consumer.reply(type, data, ref=ref)


async def _typing_hint(consumer: Any, message: dict[str, Any], ref: Any) -> None:
    await database_sync_to_async(_typing)(consumer.user, _room_slug(message))


_HANDLERS: dict[str, Callable[[Any, dict[str, Any], Any], Awaitable[None]]] = {
    SUBSCRIBE: _subscribe,
    UNSUBSCRIBE: _unsubscribe,
    POST: _post_message,
    EDIT: _edit_message,
    TYPING: _typing_hint,
}


# --- Losing a room ------------------------------------------------------------------------


def _may_read(user: Any, room_id: int) -> bool:
    return selectors.chat_room_id_is_readable_by(room_id=room_id, user=user)


async def access_check(consumer: Any, message: dict[str, Any]) -> None:
    """chat.services' ACCESS_CHECK, sent after commit to the user's group (left, removed)
    or the room's (turned private, deleted): a socket subscribed to the room keeps it only
    if its user may still read it, as committed now; otherwise it leaves the room's group,
    so nothing more of the room reaches it, and its client gets `chat.unsubscribed`
    {room, reason}. The consumer hands it one message at a time, so no subscribe or
    unsubscribe of this socket runs in between."""
    room_id = message["room_id"]
    if room_id not in _subscriptions.get(consumer, {}):
        return
    try:
        if await database_sync_to_async(_may_read)(consumer.user, room_id):
            return  # still a participant, or the room is public
    except Exception:
        # Unknown, so drop it: a subscribe asks again, and is refused if access is gone.
        logger.warning("chat access check of room %s failed; dropping it", room_id, exc_info=True)
    slug = _subscriptions.get(consumer, {}).pop(room_id, None)
    if slug is None:
        return  # resend_history (not this socket's turn of messages) dropped it meanwhile
    await consumer.leave_group(services.room_group(room_id))
    await consumer.reply(
        protocol.CHAT_UNSUBSCRIBED, {"room": slug, "reason": message.get("reason", "")}
    )


# --- After the channel layer lost Redis --------------------------------------------------


async def resend_history(consumers: list[Any]) -> None:
    """Send each socket a fresh `chat.history` (no `ref`) of every room it is subscribed to.

    notifications.consumers.SocketHub calls this (chat registers it as a resync hook)
    once the channel layer re-subscribed after losing Redis: a broadcast published
    meanwhile reached nobody, and a room's messages are not in the per-user event log
    that the sockets catch up from. One read per room, however many sockets follow it.
    Clients merge a history by message id (docs/chat.md), so what they already had is
    not shown twice.

    An access check (access_check) published meanwhile was lost too: a room its user may
    no longer read is dropped here instead, `chat.unsubscribed` with reason `no_access`,
    and its history is not sent. Two more queries for the whole process.
    """
    pairs = {(c.user.pk, room_id) for c in consumers for room_id in _subscriptions.get(c, {})}
    if not pairs:
        return
    slugs = sorted({slug for c in consumers for slug in _subscriptions.get(c, {}).values()})
    histories = await database_sync_to_async(_histories)(slugs)
    readable = await database_sync_to_async(_readable)(pairs)
    for consumer in consumers:
        subscribed = _subscriptions.get(consumer, {})
        for room_id, slug in list(subscribed.items()):  # sends yield
            if (consumer.user.pk, room_id) not in readable:
                subscribed.pop(room_id, None)
                await consumer.leave_group(services.room_group(room_id))
                data = {"room": slug, "reason": "no_access"}
                await consumer.reply(protocol.CHAT_UNSUBSCRIBED, data)
            elif slug in histories:
                data = {"room": slug, "messages": histories[slug]}
                await consumer.reply(protocol.CHAT_HISTORY, data)
