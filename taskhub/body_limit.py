"""A request body over MAX_REQUEST_BYTES (Django's DATA_UPLOAD_MAX_MEMORY_SIZE) answers 413
with a JSON message, and what the limit covers (issue 13, S1).

Django alone raises RequestDataTooBig only when a view reads such a body, which it answers
as a SuspiciousOperation: 400 with an HTML page and a logged traceback, which tells a client
neither what was wrong nor that retrying the same body is pointless. And by then the body
has been read: Django's ASGIHandler spools the whole body (to a temporary file past 2.5 MB)
before any middleware runs, and its limit counts a multipart body's fields, not its files.

So the limit is the whole body, whatever its content type (multipart included), and it is
enforced where the body arrives, in three places, one per way in:

* The web process (taskhub/daphne_server.py): Twisted buffers a request's whole body before
  Daphne calls the ASGI application, so no ASGI code could stop it. There the request's
  headers decide: a Content-Length over the limit is answered 413 as soon as the headers
  are in, and nothing of the body is kept (what the client still sends is discarded); a
  chunked body is counted as it arrives and answered 413 once it passes the limit.
* `BodyLimit`, the ASGI wrapper of taskhub/asgi.py's HTTP application, for an ASGI server
  that streams the body to the application (and as a second check under Daphne): the
  Content-Length in scope["headers"] decides before the application is called, so Django
  never receives the body; a body without one is counted as it is received and, past the
  limit, answered 413 while the application is told the client went away.
* `body_limit_middleware` (settings.MIDDLEWARE), the same rule for what does not go through
  taskhub.asgi: Django's test client. Under Daphne it never refuses anything (the two
  above already have).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import JsonResponse
from django.utils.decorators import sync_and_async_middleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def limit() -> int | None:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def detail(length: int | None, most: int) -> str:
    """The 413's message; `length` is None when the body had no Content-Length."""
    if length is None:
        return f"The request body is over {most} bytes; at most {most} are accepted."
    return f"The request body is {length} bytes; at most {most} are accepted."


def json_body(length: int | None, most: int) -> bytes:
    return json.dumps({"detail": detail(length, most)}).encode()


def declared_length(value: bytes | str | None) -> int | None:
    """A Content-Length header's value as a number; None when absent or not a number (the
    server refuses those itself)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class BodyLimit:
    """ASGI wrapper: 413 for a body over the limit, before the application reads any of it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        most = limit()
        if scope["type"] != "http" or most is None:
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        length = declared_length(header)
        if length is not None:
            if length > most:
                return await _answer_413(send, json_body(length, most))
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): count what arrives.
        return await self.app(scope, _Counted(receive, send, most), send)


class _Counted:
    def __init__(self, receive: Receive, send: Send, most: int) -> None:
        self.receive, self.send, self.most = receive, send, most
        self.received = 0
        self.refused = False

    async def __call__(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.most:
                self.refused = True
                await _answer_413(self.send, json_body(None, self.most))
                # Django's read_body answers a disconnect by dropping the request (no
                # response of its own): the 413 above is the only one.
                return {"type": "http.disconnect"}
        return message


async def _answer_413(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def too_large(request: Any) -> JsonResponse | None:
    most = limit()
    if most is None:
        return None
    length = declared_length(request.META.get("CONTENT_LENGTH") or None)
    if length is None or length <= most:
        return None
    return JsonResponse({"detail": detail(length, most)}, status=413)


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
