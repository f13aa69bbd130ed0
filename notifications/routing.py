"""WebSocket routing: /ws (and /ws/) to the event consumer."""

from __future__ import annotations

from channels.routing import URLRouter
from django.urls import re_path

from notifications.consumers import EventConsumer

websocket_application = URLRouter([re_path(r"^ws/?$", EventConsumer.as_asgi())])
