"""PostgreSQL unreachable -> 503 with Retry-After and a JSON message, not a 500.

PostgreSQL holds every task, event and user: while it is down no request that needs it
can succeed, but the failure is the server's state, not the request's fault or a bug, and
the client should simply come back. So an outage that reaches a view's caller (a refused
or lost connection, the pool's PoolTimeout, a server shutting down or starting up, too
many connections: taskhub.outages.is_database_outage) answers

    503 Service Unavailable, Retry-After: 5, {"detail": "The database is unavailable; ..."}

(the legacy endpoints answer in their own shape, `{"error": "..."}`), and the outage is
logged once per process (taskhub/outages.py) instead of a traceback per request. A
transaction that lost a race (serialization failure, deadlock) answers 503 too, with its
own message and one log line each: PostgreSQL rolled it back and the same request again
is the remedy. Every other database error (a full disk, a statement too big, a cancelled
statement, a lock not available) is not the client's to retry: it is raised on, a 500 with
its traceback in the log. A request whose transaction met the error rolled back; only a
COMMIT whose answer was lost on the way (the connection dropped right after it) can have
landed, so a retry of a create could in that one case make a second task, unless the
create carries an Idempotency-Key (docs/api.md, "Idempotent creates").
docs/running.md, "When Redis or PostgreSQL is down".

Two hooks, one answer: `api_exception_handler` for DRF views (REST_FRAMEWORK's
EXCEPTION_HANDLER, around taskhub.exceptions' handler) and `DatabaseUnavailableMiddleware`
for the plain Django views (the legacy API, the page, the admin).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from rest_framework.response import Response
from rest_framework.views import set_rollback

from taskhub.exceptions import json_exception_handler
from taskhub.outages import DATABASE, describe, is_database_outage, is_database_retry_later

logger = logging.getLogger("taskhub.api_errors")

# A PostgreSQL restart takes seconds; a client that waits this long usually finds it back.
RETRY_AFTER_SECONDS = 5
MESSAGE = "The database is unavailable; try again in a few seconds."
LOST_RACE_MESSAGE = "The request met a concurrent change and was rolled back; try again."
LEGACY_URL_NAMES = frozenset({"legacy-task-create", "legacy-task-check-result"})


def _report(exc: BaseException, request: HttpRequest | None) -> str:
    """Log `exc` (a retry-later error) and return the message its 503 gives."""
    if is_database_outage(exc):
        DATABASE.failed(exc, "requests that need it answer 503 with Retry-After")
        return MESSAGE
    # A serialization failure or deadlock: rare, worth a line each.
    path = request.path if request is not None else "?"
    logger.warning("%s answered 503: %s", path, describe(exc))
    return LOST_RACE_MESSAGE


def _unavailable(response: HttpResponse) -> HttpResponse:
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    # Django logs every 5xx response ("Service Unavailable: /api/tasks/"), a line per
    # request; the outage has had its line already.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if is_database_retry_later(exc):
        message = _report(exc, context.get("request"))
        set_rollback()
        return _unavailable(Response({"detail": message}, status=503))
    return json_exception_handler(exc, context)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """The same 503 for a database error raised by a plain Django view. Sync and async
    (MiddlewareMixin): with nothing but process_exception it adds no thread hop to a
    request (taskhub/settings.py, MIDDLEWARE, says why that matters)."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_retry_later(exception):
            return None  # a bug or the server's own trouble: a 500 with its traceback
        message = _report(exception, request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name in LEGACY_URL_NAMES:
            # The Go service's shape: compact JSON and a newline (tasks/api/legacy.py).
            body = json.dumps({"error": message}, separators=(",", ":")) + "\n"
            response = HttpResponse(body, status=503, content_type="application/json")
        else:
            response = JsonResponse({"detail": message}, status=503)
        return _unavailable(response)
