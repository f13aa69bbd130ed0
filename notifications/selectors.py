"""Every read of the event log, the inbox and the connection registry, scoped to one user."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404

from notifications import protocol
from notifications.models import Event, EventCounter, Notification
from notifications.redis_client import sync_redis

# The most events one replay query (or one /api/events/ page) loads at once.
EVENT_PAGE_MAX = 500

# Connection registry keys (see services.connection_register).
CONNECTIONS_KEY = "taskhub:ws:connections"


def user_connections_key(user_id: int) -> str:
    return f"taskhub:ws:user:{int(user_id)}"


def presence_stale_after() -> float:
    """An entry not renewed for this long belongs to a socket of a server that died."""
    return 3 * settings.TASKHUB_WS_PRESENCE_REFRESH


# --- Event log ---------------------------------------------------------------------------


def newest_event_id(*, user_id: int) -> int:
    """The last event id handed out for the user, 0 if none.

    The counter, not MAX(seq): retention may have pruned the events themselves. The counter
    row is written in the same transaction as its event, so a committed value N means
    every event up to N has committed too.
    """
    seq = EventCounter.objects.filter(user_id=user_id).values_list("last_seq", flat=True).first()
    return int(seq or 0)


def events_after(
    *, user_id: int, after_id: int, before_id: int | None = None, limit: int = EVENT_PAGE_MAX
) -> list[Event]:
    """The user's events with after_id < seq (< before_id), oldest first, at most `limit`."""
    events = Event.objects.filter(user_id=user_id, seq__gt=after_id)
    if before_id is not None:
        events = events.filter(seq__lt=before_id)
    return list(events.order_by("seq")[: max(1, limit)])


def event_frame(event: Event) -> dict[str, Any]:
    """The envelope of a stored event, identical to the frame publish() pushed."""
    return protocol.envelope(event.type, event.data, id=event.seq, ts=event.created_at)


def oldest_event_id(*, user_id: int) -> int | None:
    """The oldest event still kept for the user (None if none): a resume from further back
    than this cannot be complete, retention pruned the rest."""
    return (
        Event.objects.filter(user_id=user_id).order_by("seq").values_list("seq", flat=True).first()
    )


def task_events_for(*, user: AbstractBaseUser, task_id: UUID | str) -> QuerySet[Event]:
    """The task's events, oldest first, for its owner; Http404 for anybody else (and for an
    unknown task), which must not be told whether the task exists."""
    events = Event.objects.filter(user=user, task_id=task_id).order_by("seq")
    if not events.exists():
        raise Http404("No such task.")
    return events


# --- Inbox -------------------------------------------------------------------------------


def notification_list_for(*, user: AbstractBaseUser, unread: bool | None = None) -> QuerySet:
    notifications = Notification.objects.filter(user=user).order_by("-created_at", "-id")
    if unread is True:
        notifications = notifications.filter(read_at__isnull=True)
    elif unread is False:
        notifications = notifications.filter(read_at__isnull=False)
    return notifications


def notification_unread_count(*, user: AbstractBaseUser) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def notification_get_for(*, user: AbstractBaseUser, notification_id: int) -> Notification:
    notification = Notification.objects.filter(user=user, pk=notification_id).first()
    if notification is None:
        raise Http404("No such notification.")
    return notification


# --- Connection registry -----------------------------------------------------------------


def active_connection_count() -> int:
    """Open WebSocket connections across every web instance (the source of the
    taskhub_websocket_connections gauge). Entries of a crashed instance stop counting once
    they go stale (3 x WS_PRESENCE_REFRESH)."""
    cutoff = time.time() - presence_stale_after()
    return int(sync_redis().zcount(CONNECTIONS_KEY, f"({cutoff}", "+inf"))


def user_connection_count(*, user_id: int) -> int:
    cutoff = time.time() - presence_stale_after()
    return int(sync_redis().zcount(user_connections_key(user_id), f"({cutoff}", "+inf"))
