"""A request body over MAX_REQUEST_BYTES (Django's DATA_UPLOAD_MAX_MEMORY_SIZE) answers
413 with a JSON message, before anything reads it.

Django alone raises RequestDataTooBig when a view reads such a body, which it answers as a
SuspiciousOperation: 400 with an HTML page and a logged traceback, which tells a client
neither what was wrong nor that retrying the same body is pointless (issue 13, S1).
Decided on the declared Content-Length, so nothing is parsed. Multipart bodies are left
to Django, whose limit counts their fields but not their files; a body sent without a
Content-Length (chunked) still meets Django's own check when it is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import JsonResponse
from django.utils.decorators import sync_and_async_middleware


def too_large(request: Any) -> JsonResponse | None:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or request.content_type.startswith("multipart/"):
        return None
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= limit:
        return None
    return JsonResponse(
        {"detail": f"The request body is {length} bytes; at most {limit} are accepted."},
        status=413,
    )


@sync_and_async_middleware
def body_limit_middleware(get_response: Callable[[Any], Any]) -> Any:
    # Both flavours, so Daphne's async handler never hops to a thread for this.
    if iscoroutinefunction(get_response):

        async def async_middleware(request: Any) -> Any:
            return too_large(request) or await get_response(request)

        return async_middleware

    def middleware(request: Any) -> Any:
        return too_large(request) or get_response(request)

    return middleware
