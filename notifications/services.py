"""publish(): the one entry point other apps use to tell a user something.

It knows nothing of tasks or chat: callers hand it a type from notifications.protocol
and the data. Persisted events are written in the caller's transaction and pushed to the
user's Channels group only after that transaction commits.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from notifications import protocol
from notifications.models import Event

logger = logging.getLogger(__name__)


def next_event_seq(*, user_id: int) -> int:
    """Take the user's next event number. Call inside a transaction: the counter row stays
    locked until commit, which is what keeps a user's events committing in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifications_eventcounter (user_id, last_seq) VALUES (%s, 1)
            ON CONFLICT (user_id)
            DO UPDATE SET last_seq = notifications_eventcounter.last_seq + 1
            RETURNING last_seq
            """,
            [user_id],
        )
        return int(cursor.fetchone()[0])


def publish(*, user_id: int, type: str, data: dict[str, Any], task_id: UUID | None = None) -> Event:
    """Persist an event for `user_id` and push it to their sockets after commit."""
    with transaction.atomic():
        event = Event.objects.create(
            user_id=user_id,
            seq=next_event_seq(user_id=user_id),
            type=type,
            data=data,
            task_id=task_id,
        )
        frame = protocol.envelope(type, data, id=event.seq, ts=event.created_at)
        transaction.on_commit(lambda: push_to_user_rollback_unsafe(user_id=user_id, frame=frame))
    return event


def publish_ephemeral(*, user_id: int, type: str, data: dict[str, Any]) -> None:
    """Push an event that is not kept (progress, typing); after commit if in a transaction."""
    frame = protocol.envelope(type, data)
    transaction.on_commit(lambda: push_to_user_rollback_unsafe(user_id=user_id, frame=frame))


def push_to_user_rollback_unsafe(*, user_id: int, frame: dict[str, Any]) -> None:
    """Send a frame to every socket of the user now, committed or not.

    Only call after commit (publish() does). A failure is logged and swallowed: persisted
    events stay in the log and a client's resume delivers them.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            protocol.user_group(user_id), {"type": "event.push", "frame": frame}
        )
    except Exception:
        logger.warning("push to user %s failed; the event log keeps it", user_id, exc_info=True)
