"""A credential taken away takes its open sockets with it (issue 13, S2): a deactivated or
deleted user's sockets, and the sockets of a page whose session logged out, are closed
with 4401 by a push, not found later by the hub's sweep. The web process runs with the
sweep off (WS_CATCHUP_INTERVAL=0), so nothing else could close them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.forms import MultiWidget
from django.test import Client
from websockets.exceptions import ConnectionClosed

from chat.models import Message
from conftest import access_token_for
from devserver import testing
from devserver.wsclient import Socket, open_network
from taskhub import accounts

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def web(transactional_db, clean_connection_registry) -> Iterator[str]:
    process, base_url = testing.start_daphne(extra_env={"WS_CATCHUP_INTERVAL": "0"})
    yield base_url
    process.stop()


async def open_socket(base_url: str, user) -> Socket:
    token = await sync_to_async(access_token_for)(user)
    socket = await open_network(base_url, token=token)
    await socket.receive_type("welcome")
    return socket


def test_a_deactivated_users_sockets_close_with_4401_and_post_nothing_more(
    alice, bob, web, general_room
):
    async def scenario() -> None:
        first, second = await open_socket(web, alice), await open_socket(web, alice)
        bystander = await open_socket(web, bob)
        await first.subscribe("general")

        await sync_to_async(accounts.user_deactivate)(user=alice)
        # Sent after the deactivation committed: it must not be posted (the socket may
        # well be closed already).
        with contextlib.suppress(ConnectionClosed):
            await first.send({"type": "chat.message.post", "room": "general", "text": "after"})

        for ws in (first, second):
            code, frames = await ws.receive_close()
            assert code == 4401
            assert frames[-1]["data"]["code"] == "unauthenticated", frames
        await bystander.assert_nothing_more()
        await bystander.close()

    run(scenario())
    assert not Message.objects.filter(text="after").exists()


def test_deactivating_a_user_in_the_admin_closes_their_sockets(alice, web, operator):
    async def scenario() -> None:
        ws = await open_socket(web, alice)
        await sync_to_async(admin_save)(operator, alice, is_active=False)
        code, _ = await ws.receive_close()
        assert code == 4401

    run(scenario())


def test_a_deleted_users_sockets_close_with_4401(alice, web):
    async def scenario() -> None:
        ws = await open_socket(web, alice)
        await sync_to_async(alice.delete)()
        code, _ = await ws.receive_close()
        assert code == 4401

    run(scenario())


def test_logging_out_closes_that_sessions_sockets_only(alice, web):
    page = Client()
    page.force_login(alice)
    cookie = f"sessionid={page.cookies['sessionid'].value}"

    async def scenario() -> None:
        session_ws = await open_network(web, additional_headers={"Cookie": cookie})
        welcome = await session_ws.receive_type("welcome")
        assert welcome["data"]["user"]["username"] == "alice"
        token_ws = await open_socket(web, alice)

        response = await sync_to_async(page.post)("/accounts/logout/")
        assert response.status_code == 302

        code, frames = await session_ws.receive_close()
        assert code == 4401
        assert frames[-1]["data"]["code"] == "unauthenticated", frames
        # The same user's token socket is another credential: it stays.
        await token_ws.assert_nothing_more()
        await token_ws.close()

    run(scenario())


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def then_close() -> None:
        try:
            await scenario
        finally:
            # sync_to_async's thread keeps a connection; the test database must be dropped.
            await sync_to_async(connections.close_all)()

    asyncio.run(then_close())


def admin_save(operator: Client, user, **changes: Any) -> None:
    """Submit the admin's change form of `user` as shown, with `changes` applied."""
    url = f"/admin/auth/user/{user.pk}/change/"
    form = operator.get(url).context["adminform"].form
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        value = form[name].value()
        if isinstance(field.widget, MultiWidget):  # date_joined's date and time
            parts = field.widget.decompress(value)
            for suffix, part in zip(field.widget.widgets_names, parts, strict=True):
                data[f"{name}{suffix}"] = "" if part is None else part
        elif isinstance(value, list | tuple):
            data[name] = [v for v in value if v is not None]
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
    for name, value in changes.items():
        if isinstance(value, bool):
            data.pop(name, None)
            if value:
                data[name] = "on"
        else:
            data[name] = value
    response = operator.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    user.refresh_from_db()
    assert all(getattr(user, name) == value for name, value in changes.items())
