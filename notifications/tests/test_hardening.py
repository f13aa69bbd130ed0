"""Hostile frames and failing backing services against a real web process (the process
table's `web` line, devserver/processes.py): what a client gets is a close frame with a
code it can act on (docs/protocol.md, "Close codes"), never a bare TCP reset, and the
process keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from conftest import access_token_for
from devserver import testing
from notifications.consumers import CLOSE_SERVICE_UNAVAILABLE
from notifications.tests.raw_ws import OP_CLOSE, OP_TEXT, RawWebSocket, frame_header, masked
from notifications.tests.test_push_path import own_redis  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAX_FRAME = 64 * 1024  # WS_MAX_FRAME_BYTES, set explicitly below


@pytest.fixture
def web(transactional_db, clean_connection_registry) -> Iterator[tuple[Any, str]]:
    process, base_url = testing.start_daphne(extra_env={"WS_MAX_FRAME_BYTES": str(MAX_FRAME)})
    yield process, base_url
    process.stop()


def open_raw(base_url: str, user) -> RawWebSocket:
    socket = RawWebSocket.connect(base_url, f"/ws?token={access_token_for(user)}")
    welcome = socket.receive()
    assert json.loads(welcome.payload)["type"] == "welcome", welcome
    return socket


def ping(socket: RawWebSocket, *, padding: int = 0) -> dict:
    message = {"type": "ping", "ref": "p"}
    if padding:
        message["pad"] = "x" * padding
    socket.send_frame(OP_TEXT, json.dumps(message).encode())
    reply = socket.receive()
    assert reply.opcode == OP_TEXT, reply
    return json.loads(reply.payload)


def test_a_frame_over_the_limit_is_refused_with_1009_as_its_header_arrives(alice, bob, web):
    process, base_url = web
    socket = open_raw(base_url, alice)
    mask = os.urandom(4)
    # A 2 MiB frame of which only the header and 4 KiB are ever sent: the server can only
    # answer if it refuses on the announced length, before buffering the payload.
    socket.send_raw(frame_header(OP_TEXT, 2 * 1024 * 1024, mask=mask) + masked(b"x" * 4096, mask))

    assert socket.receive_close().close_code == 1009
    socket.close()

    # The process goes on serving: another user's socket, and a frame just under the limit.
    other = open_raw(base_url, bob)
    assert ping(other, padding=MAX_FRAME - 100)["type"] == "pong"
    other.close()
    assert "Traceback" not in process.output


def test_a_message_fragmented_past_the_limit_is_refused_with_1009(alice, web):
    _, base_url = web
    socket = open_raw(base_url, alice)
    half = b"x" * (MAX_FRAME // 2 + 1)
    socket.send_frame(OP_TEXT, b'{"type":"ping","pad":"' + half, fin=False)
    socket.send_frame(0x0, half, fin=False)  # continuation: the message is now over the limit

    assert socket.receive_close().close_code == 1009


def test_invalid_utf8_in_a_text_frame_is_refused_with_1007(alice, bob, web):
    process, base_url = web
    socket = open_raw(base_url, alice)
    socket.send_frame(OP_TEXT, b'{"type":"ping","ref":"\xff\xfe"}')

    close = socket.receive_close()
    assert (close.opcode, close.close_code) == (OP_CLOSE, 1007)

    other = open_raw(base_url, bob)
    assert ping(other)["type"] == "pong"
    assert "Traceback" not in process.output


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack("!H", 1005), 1002),  # a code no endpoint may send (RFC 6455 §7.4.1)
        (struct.pack("!H", 999), 1002),
        (b"\x03", 1002),  # one byte: no room for a code
        (struct.pack("!H", 1000) + b"\xff\xfe", 1007),  # a reason that is not UTF-8
    ],
    ids=["code 1005", "code 999", "one byte", "reason not UTF-8"],
)
def test_an_invalid_close_frame_is_answered_with_a_close_frame_not_a_reset(
    alice, bob, web, payload, code
):
    # autobahn queues its 1002/1007 close and, taking the bad close for the reply to it,
    # aborted the TCP connection in the same call: the client saw a reset (issue 13, R6).
    process, base_url = web
    socket = open_raw(base_url, alice)
    socket.send_frame(OP_CLOSE, payload)

    close = socket.receive_close()
    assert (close.opcode, close.close_code) == (OP_CLOSE, code)
    socket.close()

    other = open_raw(base_url, bob)
    assert ping(other)["type"] == "pong"
    assert "Traceback" not in process.output


def test_a_valid_close_is_echoed(alice, web):
    _, base_url = web
    socket = open_raw(base_url, alice)
    socket.send_frame(OP_CLOSE, struct.pack("!H", 1000))
    assert socket.receive_close().close_code == 1000


def test_a_connect_whose_registration_fails_is_closed_with_4503(alice, own_redis):  # noqa: F811
    # The channel layer (SUBSCRIBE, PUBLISH) works; the connection registry's script is
    # refused, as a failing Redis refuses it: the consumer's set-up fails after accept.
    redis.Redis.from_url(own_redis.url).acl_setuser(
        "default", enabled=True, nopass=True, commands=["+@all", "-eval", "-evalsha"],
        keys=["*"], channels=["*"], reset=False,
    )  # fmt: skip
    process, base_url = testing.start_daphne(extra_env={"REDIS_URL": own_redis.url})
    try:

        async def scenario() -> int | None:
            url = base_url.replace("http://", "ws://") + f"/ws?token={access_token_for(alice)}"
            async with ws_connect(url) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code if closed.value.rcvd else None

        assert asyncio.run(scenario()) == CLOSE_SERVICE_UNAVAILABLE == 4503
    finally:
        process.stop()


def test_while_redis_is_down_connects_get_4503_with_one_log_line_and_work_once_it_is_back(
    alice,
    own_redis,  # noqa: F811
):
    process, base_url = testing.start_daphne(extra_env={"REDIS_URL": own_redis.url})
    url = base_url.replace("http://", "ws://") + f"/ws?token={access_token_for(alice)}"

    async def connect_once() -> tuple[int | None, list[dict]]:
        frames = []
        async with ws_connect(url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        return (closed.value.rcvd.code if closed.value.rcvd else None), frames

    async def welcome() -> dict:
        async with ws_connect(url) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

    try:
        own_redis.stop()
        for _ in range(3):
            code, _ = asyncio.run(connect_once())
            assert code == CLOSE_SERVICE_UNAVAILABLE
        own_redis.start()
        assert asyncio.run(welcome())["type"] == "welcome"
    finally:
        process.stop()
    assert process.output.count("Redis unavailable") == 1, process.output[-3000:]
    assert "Redis available again" in process.output
    assert "Traceback" not in process.output


def test_a_connect_just_after_redis_came_back_gets_its_welcome(
    alice,
    own_redis,  # noqa: F811
):
    """Redis restarted (or CLIENT KILL, or its `timeout`, closed the web's idle
    connections) and answers again: the next connect must get its welcome, not 4503
    because its SUBSCRIBE or its registry write went out on a pooled connection the server
    had already closed (issue 13, R3: a 4503 and a "Redis unavailable" line after every
    return of Redis)."""
    process, base_url = testing.start_daphne(extra_env={"REDIS_URL": own_redis.url})
    url = base_url.replace("http://", "ws://") + f"/ws?token={access_token_for(alice)}"

    async def first_frame() -> dict | int | None:
        async with ws_connect(url) as ws:
            try:
                return json.loads(await asyncio.wait_for(ws.recv(), 30))
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    def drop_ordinary_connections() -> None:
        # Every ordinary connection (the registry's, PUBLISH), not the layer's subscriber.
        killer = redis.Redis.from_url(own_redis.url)
        killer.execute_command("CLIENT", "KILL", "TYPE", "normal")
        killer.close()

    try:
        outcomes = [asyncio.run(first_frame())]  # the pools hold connections from here on
        for fault in [own_redis.stop, drop_ordinary_connections] * 2:
            fault()
            if own_redis.proc.poll() is not None:
                own_redis.start()
            outcomes.append(asyncio.run(first_frame()))
        codes = [o if isinstance(o, int | None) else o["type"] for o in outcomes]
        assert codes == ["welcome"] * 5, process.output[-3000:]
    finally:
        process.stop()
    # The stops are outages (the layer's receive loop says so); no connect failed.
    assert "new WebSockets are closed with 4503" not in process.output, process.output[-3000:]
    assert "Traceback" not in process.output


def test_a_socket_that_closes_while_redis_is_down_is_released_with_one_outage_line(
    alice,
    own_redis,  # noqa: F811
):
    """Its registry entry cannot be removed (it expires on its own): the outage line, not a
    traceback per batch of closed sockets (issue 13, R3)."""
    process, base_url = testing.start_daphne(extra_env={"REDIS_URL": own_redis.url})
    url = base_url.replace("http://", "ws://") + f"/ws?token={access_token_for(alice)}"

    async def close_while_redis_is_down() -> None:
        for _ in range(3):
            async with ws_connect(url) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "welcome"
                await asyncio.to_thread(own_redis.stop)
            await asyncio.to_thread(own_redis.start)

    try:
        asyncio.run(close_while_redis_is_down())
        process.wait_for_output("Redis available again")
    finally:
        process.stop()
    assert "Traceback" not in process.output, process.output[-3000:]
