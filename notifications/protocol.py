"""The WebSocket event protocol, version 1: every event type and its envelope.

Producers, the consumer and docs/protocol.md all follow this module, so they cannot
drift apart. See docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

PROTOCOL_VERSION = 1

# Server -> client, persisted in the user's event log (carry an `id`).
TASK_UPDATED = "task.updated"
# An operator deleted the task (tasks.services.task_delete): its last event.
TASK_DELETED = "task.deleted"
NOTIFICATION_NEW = "notification.new"
# Chat messages are persisted in chat's own tables, not per user: their envelopes carry no
# `id` (the message's id is in `data`), and a rejoining client gets chat.history instead.
CHAT_MESSAGE_POSTED = "chat.message.posted"
CHAT_MESSAGE_EDITED = "chat.message.edited"
# A moderator deleted a message in the admin (chat.services.chat_message_delete).
CHAT_MESSAGE_DELETED = "chat.message.deleted"
PERSISTED_TYPES = frozenset({TASK_UPDATED, TASK_DELETED, NOTIFICATION_NEW})

# Server -> client, ephemeral (no `id`).
WELCOME = "welcome"
TASK_PROGRESS = "task.progress"
# Notifications were marked read (another tab, the API): {ids} or {all: true}, and read_at.
NOTIFICATION_READ = "notification.read"
CHAT_HISTORY = "chat.history"
CHAT_TYPING = "chat.typing"
# The server ended this socket's subscription to a room its user may no longer read
# (left it, removed from it, it turned private or was deleted): chat.ws.access_check.
CHAT_UNSUBSCRIBED = "chat.unsubscribed"
# The user became a participant of a room elsewhere (invited, a direct room started by the
# other user, a room they created in another tab): {room, reason}; re-read the room list.
CHAT_ROOM_ADDED = "chat.room.added"
PONG = "pong"
ERROR = "error"

# The `status` values of task.updated after which a task changes no more (until a retry)
# and sends no more task.progress. The one copy: tasks.models.TERMINAL_STATUSES is built
# from it (tasks depends on notifications, never the other way round), the consumer
# drops late progress by it, and the page gets it in its bootstrap data
# (taskhub/pages.py), so dashboard.js holds no list of its own.
TASK_TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

# Client -> server. The consumer answers `ping` and `resume` itself; the chat commands
# are the protocol's words too, but chat handles them: chat.apps.ChatConfig.ready()
# registers its handler for them (register_client_commands below). Without chat
# installed they are answered `unavailable`; any other type is `unknown_type`.
PING = "ping"
RESUME = "resume"
CHAT_SUBSCRIBE = "subscribe.chat"
CHAT_UNSUBSCRIBE = "unsubscribe.chat"
CHAT_MESSAGE_POST = "chat.message.post"
CHAT_MESSAGE_EDIT = "chat.message.edit"
# chat.typing is both a client command and the ephemeral frame other members get.
CHAT_COMMANDS = frozenset(
    {CHAT_SUBSCRIBE, CHAT_UNSUBSCRIBE, CHAT_MESSAGE_POST, CHAT_MESSAGE_EDIT, CHAT_TYPING}
)
PLUGGABLE_COMMANDS = CHAT_COMMANDS

# `await handler(consumer, message)`: the consumer's public API (user, channel_name,
# reply(), reply_error(), join_group(), leave_group()) and the decoded client frame.
ClientCommandHandler = Callable[[Any, dict[str, Any]], Awaitable[None]]
# `await hook(consumers)`: the open sockets of one process after its channel layer lost
# Redis and came back (pushes meanwhile reached nobody).
ResyncHook = Callable[[list[Any]], Awaitable[None]]
# `await handler(consumer, message)`: a channel-layer message of another app's type sent
# to a group the socket is in (chat's access checks), rather than a frame to forward.
GroupMessageHandler = Callable[[Any, dict[str, Any]], Awaitable[None]]

# Filled once per process by the apps' AppConfig.ready(); read by the consumer only.
client_command_handlers: dict[str, ClientCommandHandler] = {}
resync_hooks: list[ResyncHook] = []
group_message_handlers: dict[str, GroupMessageHandler] = {}


def register_client_commands(
    handler: ClientCommandHandler, types: Iterable[str], *, resync: ResyncHook | None = None
) -> None:
    """Route the client frames of `types` to `handler` (and run `resync` after a channel
    layer reconnect). Lets an app built on notifications plug its commands into the
    socket without notifications importing it. Idempotent for the same handler;
    a type outside PLUGGABLE_COMMANDS, or one another handler holds, is a programming
    error."""
    types = frozenset(types)
    unknown = types - PLUGGABLE_COMMANDS
    if unknown:
        raise ValueError(f"not client commands of the protocol: {sorted(unknown)}")
    for type in types:
        if client_command_handlers.get(type, handler) is not handler:
            raise ValueError(f"{type!r} already has a handler")
    for type in types:
        client_command_handlers[type] = handler
    if resync is not None and resync not in resync_hooks:
        resync_hooks.append(resync)


def register_group_message(type: str, handler: GroupMessageHandler) -> None:
    """Route the channel-layer messages of `type` that reach a socket (through a group it
    is in) to `handler`: notifications never imports the app that sends them. Idempotent
    for the same handler. The consumer's own types (event.push, session.revoked...) are
    its methods' and never reach a registered handler."""
    if group_message_handlers.get(type, handler) is not handler:
        raise ValueError(f"{type!r} already has a handler")
    group_message_handlers[type] = handler


def format_ts(moment: datetime | None = None) -> str:
    """ISO 8601 in UTC with microseconds and a `Z`, as the protocol shows."""
    moment = moment or timezone.now()
    # isoformat, not strftime: the same text at a fraction of the cost (this runs for
    # every event published and every frame replayed).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def envelope(
    type: str, data: dict[str, Any], *, id: int | None = None, ts: datetime | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": type}
    if id is not None:
        frame["id"] = id
    frame["ts"] = format_ts(ts)
    frame["data"] = data
    return frame


def user_group(user_id: int) -> str:
    """The Channels group of every connection one user holds (ASCII, < 100 chars)."""
    return f"user.{int(user_id)}"
