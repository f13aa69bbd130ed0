"""WebSocket routing: /ws (and /ws/) to the event consumer, behind Origin and auth checks."""

from __future__ import annotations

from channels.routing import URLRouter
from django.urls import re_path

from notifications.consumers import EventConsumer
from notifications.middleware import WebsocketAuthStack

websocket_application = WebsocketAuthStack(URLRouter([re_path(r"^ws/?$", EventConsumer.as_asgi())]))
