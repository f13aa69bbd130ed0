"""taskhub/middleware.py runs Django's middleware hooks on the event loop: the settings that
would make one of them do database I/O there are handled, not left to block the loop."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory

from taskhub.middleware import CsrfViewMiddleware, SessionMiddleware


async def ok(request):
    return HttpResponse("ok")


def test_csrf_tokens_in_the_session_are_refused_at_startup(settings):
    settings.CSRF_USE_SESSIONS = True

    with pytest.raises(ImproperlyConfigured, match="CSRF_USE_SESSIONS"):
        CsrfViewMiddleware(ok)


def test_the_csrf_cookie_default_loads(settings):
    settings.CSRF_USE_SESSIONS = False

    CsrfViewMiddleware(ok)


def untouched_session_request():
    middleware = SessionMiddleware(ok)
    request = RequestFactory().get("/api/tasks/")
    middleware.process_request(request)
    return middleware, request


def test_an_untouched_session_is_not_saved_from_a_thread(settings):
    settings.SESSION_SAVE_EVERY_REQUEST = False
    middleware, request = untouched_session_request()

    assert not middleware.response_needs_thread(request, HttpResponse())


def test_save_every_request_sends_every_session_save_to_the_thread(settings):
    settings.SESSION_SAVE_EVERY_REQUEST = True
    middleware, request = untouched_session_request()

    assert middleware.response_needs_thread(request, HttpResponse())
