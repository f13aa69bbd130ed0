"""Django's and django-prometheus's middlewares without a thread hop per hook on Daphne.

Under ASGI, Django runs every MiddlewareMixin middleware in async mode, and its
`__acall__` sends each `process_request` / `process_response` through
`sync_to_async(thread_sensitive=True)`: a hand-off to the request's thread and back, and
Django adapts every `process_view` the same way. With the eleven middlewares of
settings.MIDDLEWARE that was about 18 hops per REST request, a third of Daphne's CPU in
py-spy (docs/benchmarks.md, "REST create: where the time went (this round)").

Most of these hooks never block: they read headers and set headers (security, common,
X-Frame-Options, the Prometheus counters, CSRF's cookie) or install lazy objects
(`request.user`, `request.session`, `request._messages`). Here they run inline on the
event loop. The hooks that can do I/O still go to the thread, and only when they would:
the session middleware's response hook when the request touched the session (its save
is a database write; every request under SESSION_SAVE_EVERY_REQUEST), the messages
middleware's when messages were read or added (their storage may be the session). So an
API request spends one hop, the view's own; a page that uses its session pays the hops it
needs. CSRF_USE_SESSIONS would make the CSRF request hook read the session on the loop:
refused at startup (ImproperlyConfigured).

In sync mode (WSGI, Django's test client) the classes behave exactly as their parents
(the CSRF_USE_SESSIONS refusal aside).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.middleware import clickjacking, common, csrf, security
from django_prometheus import middleware as prometheus
from servestatic.middleware import ServeStaticMiddleware
from servestatic.responders import MissingFileError


class InlineAsyncMixin:
    """MiddlewareMixin's async mode with the hooks called on the loop, not in a thread.

    Only for middlewares whose hooks do no I/O; `response_needs_thread` names the
    requests whose response hook may (it then runs in the request's thread as before)."""

    def response_needs_thread(self, request: Any, response: Any) -> bool:
        return False

    async def __acall__(self, request: Any) -> Any:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)  # type: ignore[attr-defined]
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = self.process_response(request, response)
        return response


class PrometheusBeforeMiddleware(InlineAsyncMixin, prometheus.PrometheusBeforeMiddleware):
    pass


class SecurityMiddleware(InlineAsyncMixin, security.SecurityMiddleware):
    pass


class SessionMiddleware(InlineAsyncMixin, sessions.SessionMiddleware):
    """process_request only builds the lazy store; the response hook saves the session
    (a database write) or deletes its cookie, and runs in the thread when the request
    accessed the session at all, or always under SESSION_SAVE_EVERY_REQUEST (which saves
    every non-empty session, accessed or not)."""

    def response_needs_thread(self, request: Any, response: Any) -> bool:
        if settings.SESSION_SAVE_EVERY_REQUEST:
            return True
        session = getattr(request, "session", None)
        return session is None or session.accessed or session.modified


class CommonMiddleware(InlineAsyncMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineAsyncMixin, csrf.CsrfViewMiddleware):
    """CSRF_USE_SESSIONS is off (the token is a cookie), so the request and response hooks
    only read and set headers. process_view may read request.POST (a multipart body can
    spill to a temporary file): it runs in the thread, except for the views that are
    exempt (every DRF view: SessionAuthentication does its own check), which return at
    once, as the parent's first lines do.

    With CSRF_USE_SESSIONS the token lives in the session, and process_request would read
    it (a database query) on the event loop: refused when the middleware is loaded, i.e.
    when the web process starts."""

    def __init__(self, get_response: Any) -> None:
        if settings.CSRF_USE_SESSIONS:
            raise ImproperlyConfigured(
                "CSRF_USE_SESSIONS = True is not supported: taskhub.middleware runs the CSRF "
                "hooks on the event loop, where reading the session would block it; keep the "
                "token in its cookie (the default)"
            )
        super().__init__(get_response)

    async def process_view(  # type: ignore[override]
        self, request: Any, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> Any:
        if getattr(request, "csrf_processing_done", False) or getattr(
            callback, "csrf_exempt", False
        ):
            return None
        return await sync_to_async(super().process_view, thread_sensitive=True)(
            request, callback, callback_args, callback_kwargs
        )


class AuthenticationMiddleware(InlineAsyncMixin, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(InlineAsyncMixin, messages.MessageMiddleware):
    """The response hook stores messages only if they were read or added (the storage may
    be the session: a database write), and then runs in the thread."""

    def response_needs_thread(self, request: Any, response: Any) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineAsyncMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class PrometheusAfterMiddleware(InlineAsyncMixin, prometheus.PrometheusAfterMiddleware):
    """process_view only counts the request by view."""

    async def process_view(self, request: Any, view_func: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().process_view(request, view_func, *args, **kwargs)

    async def process_template_response(self, request: Any, response: Any) -> Any:  # type: ignore[override]
        # Counts the template's name: no I/O.
        return super().process_template_response(request, response)


class StaticFilesMiddleware(ServeStaticMiddleware):
    """ServeStatic, with a static URL that names no file answered 404 in development too.

    Under DEBUG, ServeStatic raises MissingFileError for such a URL (`/static/`, a typo, a
    file not collected yet), which Django turns into a 500 and a traceback in the log: a
    wrong URL is the client's mistake, not the server's. It is a 404 with ServeStatic's own
    explanation (where it looked) as the message; without DEBUG it is the usual JSON 404."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            return await super().__call__(request)
        except MissingFileError as missing:
            return JsonResponse({"detail": str(missing)}, status=404)
