"""Notifications fixtures: events published the ways the app publishes them. The WebSocket
client (`connect`, devserver/wsclient.py) and the personas are the root conftest.py's."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import transaction

from notifications import selectors, services
from notifications.models import Event


@pytest.fixture(autouse=True)
def _no_open_sockets_counted(clean_connection_registry) -> None:
    """Every test here starts from a registry with no socket of an earlier test in it."""


@database_sync_to_async
def publish_event(user: Any, n: int = 0, task_id: Any = None) -> int:
    """Publish one persisted event for `user` (pushed after commit); returns its id."""
    with transaction.atomic():
        event = services.publish(
            user_id=user.pk, type="task.updated", data={"n": n}, task_id=task_id
        )
    return event.seq


@database_sync_to_async
def publish_event_data(user: Any, data: dict[str, Any]) -> int:
    with transaction.atomic():
        return services.publish(user_id=user.pk, type="task.updated", data=data).seq


@database_sync_to_async
def write_event_without_push(user: Any, n: int = 0) -> int:
    """An event in the log whose push is lost (as with a Redis blip after commit)."""
    with transaction.atomic():
        event = Event.objects.create(
            user_id=user.pk,
            seq=services.next_event_seq(user_id=user.pk),
            type="task.updated",
            data={"n": n},
        )
    return event.seq


@database_sync_to_async
def newest_event_id(user: Any) -> int:
    return selectors.newest_event_id(user_id=user.pk)
