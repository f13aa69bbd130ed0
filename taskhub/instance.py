"""Which process served a request or holds a socket (docs/scaling.md).

With several web instances behind a load balancer, a user and a test need to see where a
request or a WebSocket landed: every HTTP response carries `X-TaskHub-Server`, and the
WebSocket welcome frame carries the same name as `data.server`. INSTANCE_NAME sets it
(the launcher names its instances web1, web2, ...); unset, it is host:pid in development
and nothing in production.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.utils.decorators import sync_and_async_middleware

HEADER = "X-TaskHub-Server"


def instance_name() -> str:
    """INSTANCE_NAME; in development host:pid when unset. A production process without a
    configured name says nothing (its host name and pid are not the clients' business)."""
    if settings.TASKHUB_INSTANCE_NAME:
        return settings.TASKHUB_INSTANCE_NAME
    return f"{socket.gethostname()}:{os.getpid()}" if settings.DEBUG else ""


@sync_and_async_middleware
def instance_header_middleware(get_response: Callable[[Any], Any]) -> Any:
    # Both flavours, so Daphne's async handler never hops to a thread for this.
    if iscoroutinefunction(get_response):

        async def async_middleware(request: Any) -> Any:
            response = await get_response(request)
            if name := instance_name():
                response[HEADER] = name
            return response

        return async_middleware

    def middleware(request: Any) -> Any:
        response = get_response(request)
        if name := instance_name():
            response[HEADER] = name
        return response

    return middleware
