"""ASGI entry point: HTTP to Django, WebSocket /ws to the notifications consumer."""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")

# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from notifications.routing import websocket_application  # noqa: E402
from taskhub.body_limit import BodyLimit  # noqa: E402

application = ProtocolTypeRouter(
    {
        # A body over MAX_REQUEST_BYTES is answered 413 from its Content-Length before Django
        # reads (and spools) any of it, multipart included (taskhub/body_limit.py).
        "http": BodyLimit(django_asgi_app),
        "websocket": websocket_application,
    }
)

# Everything loaded so far (Django, the apps, their modules) lives as long as the process:
# freeze it out of the cyclic collector, whose full passes would otherwise rescan it
# beside the objects of thousands of sockets. While many sockets are open, the socket hub
# freezes again about every second (taskhub/gc_policy.py).
gc.freeze()
