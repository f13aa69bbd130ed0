"""The WebSocket event protocol, version 1: every event type and its envelope.

Producers, the consumer and docs/protocol.md all follow this module, so they cannot
drift apart. See docs/protocol.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

PROTOCOL_VERSION = 1

# Server -> client, persisted in the user's event log (carry an `id`).
TASK_UPDATED = "task.updated"
NOTIFICATION_NEW = "notification.new"
# Chat messages are persisted in chat's own tables, not per user: their envelopes carry no
# `id` (the message's id is in `data`), and a rejoining client gets chat.history instead.
CHAT_MESSAGE_POSTED = "chat.message.posted"
CHAT_MESSAGE_EDITED = "chat.message.edited"
PERSISTED_TYPES = frozenset({TASK_UPDATED, NOTIFICATION_NEW})

# Server -> client, ephemeral (no `id`).
WELCOME = "welcome"
TASK_PROGRESS = "task.progress"
CHAT_HISTORY = "chat.history"
CHAT_TYPING = "chat.typing"
PONG = "pong"
ERROR = "error"


def format_ts(moment: datetime | None = None) -> str:
    """ISO 8601 in UTC with microseconds and a `Z`, as the protocol shows."""
    moment = moment or timezone.now()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
