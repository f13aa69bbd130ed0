"""REST authentication reads a token's user row at most once per REST_AUTH_CACHE_SECONDS
in a process, and a deactivated user is still refused: at once in the process that
deactivated them, within that bound everywhere else (taskhub/auth_jwt.py). And the
middlewares that run inline on Daphne's loop (taskhub/middleware.py) still save a
session and check CSRF when a request needs them."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext

from taskhub import accounts, auth_jwt

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache():
    auth_jwt._cache.clear()
    yield
    auth_jwt._cache.clear()


def user_row_reads(queries: CaptureQueriesContext) -> int:
    return sum('FROM "auth_user"' in query["sql"] for query in queries.captured_queries)


def test_a_users_second_request_does_not_read_their_row_again(alice, client_for):
    api = client_for(alice)
    with CaptureQueriesContext(connection) as first:
        assert api.get("/api/tasks/").status_code == 200
    with CaptureQueriesContext(connection) as second:
        assert api.get("/api/tasks/").status_code == 200

    assert user_row_reads(first) == 1
    assert user_row_reads(second) == 0


def test_a_user_deactivated_in_this_process_is_refused_on_the_next_request(alice, client_for):
    api = client_for(alice)
    assert api.get("/api/tasks/").status_code == 200

    accounts.user_deactivate(user=alice)

    assert api.get("/api/tasks/").status_code == 401


def test_a_deleted_user_is_refused_on_the_next_request(alice, client_for):
    api = client_for(alice)
    assert api.get("/api/tasks/").status_code == 200

    alice.delete()

    assert api.get("/api/tasks/").status_code == 401


def test_a_deactivation_without_a_signal_is_refused_once_the_cache_time_has_passed(
    alice, client_for, monkeypatch, settings
):
    """A bulk update (or a save in another process) sends no signal here: the bound is
    REST_AUTH_CACHE_SECONDS."""
    settings.TASKHUB_REST_AUTH_CACHE_SECONDS = 5.0
    clock = [1000.0]
    monkeypatch.setattr(auth_jwt.time, "monotonic", lambda: clock[0])
    api = client_for(alice)
    assert api.get("/api/tasks/").status_code == 200

    User.objects.filter(pk=alice.pk).update(is_active=False)
    clock[0] += 4.9
    within_the_bound = api.get("/api/tasks/").status_code
    clock[0] += 0.2
    after_it = api.get("/api/tasks/").status_code

    assert within_the_bound == 200
    assert after_it == 401


def test_with_the_cache_off_every_request_reads_the_row(alice, client_for, settings):
    settings.TASKHUB_REST_AUTH_CACHE_SECONDS = 0
    api = client_for(alice)
    assert api.get("/api/tasks/").status_code == 200

    User.objects.filter(pk=alice.pk).update(is_active=False)

    assert api.get("/api/tasks/").status_code == 401


def test_an_inactive_user_is_not_cached_so_reactivation_lets_them_in_at_once(alice, client_for):
    User.objects.filter(pk=alice.pk).update(is_active=False)
    api = client_for(alice)
    assert api.get("/api/tasks/").status_code == 401

    User.objects.filter(pk=alice.pk).update(is_active=True)

    assert api.get("/api/tasks/").status_code == 200


def test_requests_do_not_share_the_cached_user_object(alice, client_for):
    api = client_for(alice)
    api.get("/api/tasks/")
    cached = auth_jwt._cache[str(alice.pk)][1]
    first = auth_jwt.CachedJWTAuthentication().get_user({"user_id": alice.pk})
    first.first_name = "changed by one request"

    second = auth_jwt.CachedJWTAuthentication().get_user({"user_id": alice.pk})

    assert second is not first and second is not cached
    assert second.first_name == ""


# --- the async middleware chain (what Daphne runs) ---------------------------------------


def test_on_the_async_handler_a_login_saves_its_session_and_the_next_page_sees_it(alice):
    async def scenario() -> tuple[int, int, int]:
        browser = AsyncClient()
        before = await browser.get("/")
        login = await browser.post(
            "/accounts/login/", {"username": "alice", "password": "alice-pass-123"}
        )
        after = await browser.get("/")
        return before.status_code, login.status_code, after.status_code

    before, login, after = async_to_sync(scenario)()

    assert before == 302  # to the login page
    assert login == 302  # signed in, redirected
    assert after == 200


def test_on_the_async_handler_a_form_post_without_a_csrf_token_is_refused(alice):
    async def scenario() -> int:
        browser = AsyncClient(enforce_csrf_checks=True)
        response = await browser.post(
            "/accounts/login/", {"username": "alice", "password": "alice-pass-123"}
        )
        return response.status_code

    assert async_to_sync(scenario)() == 403
