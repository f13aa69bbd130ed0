"""A credential taken away takes its open sockets with it (issue 13, S2): a deactivated or
deleted user's sockets, and the sockets of a page whose session logged out, are closed
with 4401 by a push, not found later by the hub's sweep. The web process runs with the
sweep off (WS_CATCHUP_INTERVAL=0), so nothing else could close them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.forms import MultiWidget
from django.test import Client
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from chat.models import Message
from conftest import access_token_for
from devserver import testing
from taskhub import accounts

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A bound on waiting, not a speed claim: with the sweep off only the push can close.
WAIT = 10


@pytest.fixture
def web(transactional_db, clean_connection_registry) -> Iterator[str]:
    process, base_url = testing.start_daphne(extra_env={"WS_CATCHUP_INTERVAL": "0"})
    yield base_url
    process.stop()


def ws_url(base_url: str, token: str | None = None) -> str:
    url = base_url.replace("http://", "ws://") + "/ws"
    return url + (f"?token={token}" if token else "")


async def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def closed_with(ws: ClientConnection) -> tuple[int | None, list[dict[str, Any]]]:
    """Frames until the server closes; the close code and those frames."""
    frames = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frames.append(await receive(ws))
    return (closed.value.rcvd.code if closed.value.rcvd else None), frames


async def pong(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "ping", "ref": "alive"}))
    return await receive(ws)


async def open_socket(base_url: str, user) -> ClientConnection:
    ws = await ws_connect(ws_url(base_url, await sync_to_async(access_token_for)(user)))
    assert (await receive(ws))["type"] == "welcome"
    return ws


def test_a_deactivated_users_sockets_close_with_4401_and_post_nothing_more(
    alice, bob, web, general_room
):
    async def scenario() -> None:
        first, second = await open_socket(web, alice), await open_socket(web, alice)
        bystander = await open_socket(web, bob)
        await first.send(json.dumps({"type": "subscribe.chat", "room": "general"}))
        assert (await receive(first))["type"] == "chat.history"

        await sync_to_async(accounts.user_deactivate)(user=alice)
        # Sent after the deactivation committed: it must not be posted (the socket may
        # well be closed already).
        with contextlib.suppress(ConnectionClosed):
            await first.send(
                json.dumps({"type": "chat.message.post", "room": "general", "text": "after"})
            )

        for ws in (first, second):
            code, frames = await closed_with(ws)
            assert code == 4401
            assert frames[-1]["data"]["code"] == "unauthenticated", frames
        assert (await pong(bystander))["type"] == "pong"
        await bystander.close()

    run(scenario())
    assert not Message.objects.filter(text="after").exists()


def test_deactivating_a_user_in_the_admin_closes_their_sockets(alice, web, operator):
    async def scenario() -> None:
        ws = await open_socket(web, alice)
        await sync_to_async(admin_save)(operator, alice, is_active=False)
        code, _ = await closed_with(ws)
        assert code == 4401

    run(scenario())


def test_a_deleted_users_sockets_close_with_4401(alice, web):
    async def scenario() -> None:
        ws = await open_socket(web, alice)
        await sync_to_async(alice.delete)()
        code, _ = await closed_with(ws)
        assert code == 4401

    run(scenario())


def test_logging_out_closes_that_sessions_sockets_only(alice, web):
    page = Client()
    page.force_login(alice)
    cookie = f"sessionid={page.cookies['sessionid'].value}"

    async def scenario() -> None:
        session_ws = await ws_connect(ws_url(web), additional_headers={"Cookie": cookie})
        assert (await receive(session_ws))["data"]["user"]["username"] == "alice"
        token_ws = await open_socket(web, alice)

        response = await sync_to_async(page.post)("/accounts/logout/")
        assert response.status_code == 302

        code, frames = await closed_with(session_ws)
        assert code == 4401
        assert frames[-1]["data"]["code"] == "unauthenticated", frames
        # The same user's token socket is another credential: it stays.
        assert (await pong(token_ws))["type"] == "pong"
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
