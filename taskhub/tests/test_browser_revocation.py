"""The page when its credential is taken away (issue 13, S2), in headless Chromium against
a real web process: signing out in one tab signs out the others of that browser session,
and a deactivated user's open page goes to the sign-in form. Both through the socket's
4401 (taskhub/accounts.py, protocol-client.js's "fatal"), not a reload: the web process
runs with the sweep off (WS_CATCHUP_INTERVAL=0), so nothing else could do it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis

from devserver import testing
from notifications.tests.test_push_path import own_redis  # noqa: F401 (a fixture)
from taskhub import accounts
from taskhub.tests.test_browser import (  # noqa: F401 (fixtures)
    browser,
    expect,
    on_server,
    open_page,
    pytestmark,
    sign_in,
    wait_until_live,
)

SIGN_IN = re.compile(r"/accounts/login/")


@pytest.fixture
def web_url(transactional_db, general_room) -> Iterator[str]:
    web, base_url = testing.start_daphne(extra_env={"WS_CATCHUP_INTERVAL": "0"})
    yield base_url
    web.stop()


def test_signing_out_in_one_tab_signs_out_the_other_tabs(web_url, open_page, alice):  # noqa: F811
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")
    other = page.context.new_page()  # same browser session, same cookie
    other.goto(f"{web_url}/")
    wait_until_live(other)

    page.get_by_role("button", name="Sign out").click()

    expect(page).to_have_url(SIGN_IN)
    expect(other).to_have_url(SIGN_IN)


def test_a_deactivated_users_open_page_goes_to_the_sign_in_form(web_url, open_page, alice):  # noqa: F811
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")

    on_server(accounts.user_deactivate, user=alice)

    expect(page).to_have_url(SIGN_IN)


@pytest.fixture
def refusing_redis(own_redis):  # noqa: F811
    """A Redis of the test's own that refuses scripts: the socket registry's, so every
    connect fails after accept (4503); pub/sub, the cache and the broker still work."""
    client = redis.Redis.from_url(own_redis.url)

    def refuse(refused: bool) -> None:
        rule = "-" if refused else "+"
        client.acl_setuser(
            "default", enabled=True, nopass=True, keys=["*"], channels=["*"],
            commands=["+@all", f"{rule}eval", f"{rule}evalsha"],
        )  # fmt: skip

    refuse(True)
    own_redis.refuse = refuse
    return own_redis


@pytest.fixture
def web_on_refusing_redis(transactional_db, refusing_redis) -> Iterator[str]:
    web, base_url = testing.start_daphne(extra_env={"REDIS_URL": refusing_redis.url})
    yield base_url
    web.stop()


def test_the_page_backs_off_while_the_server_answers_4503_and_goes_live_after(
    web_on_refusing_redis,
    refusing_redis,
    open_page,  # noqa: F811
    alice,
):
    base_url = web_on_refusing_redis
    page = open_page()
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(alice.username)
    page.get_by_label("Password").fill("alice-pass-123")
    page.get_by_role("button", name="Sign in").click()

    expect(page.locator("#conn-status")).to_have_text("Server busy, retrying…")

    refusing_redis.refuse(False)
    wait_until_live(page)
