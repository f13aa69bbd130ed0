"""The tests' WebSocket client: one `Socket` for a /ws connection, whether it runs through
the ASGI app inside the test process (channels' WebsocketCommunicator, on the real Redis
channel layer) or over TCP to a real Daphne (`websockets`). The fixture that opens and
closes them for a test is `connect` in the root conftest.py; notifications/tests/raw_ws.py
is for the frames no client library sends.

Waits here are bounds (a test fails instead of hanging), never speed claims.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

# A bound on one wait for a frame; the machine running the suite may be loaded.
RECEIVE_TIMEOUT = 10.0


class _Asgi:
    """The app in this process: frames are the communicator's ASGI messages."""

    def __init__(self, communicator: Any) -> None:
        self.communicator = communicator

    async def send(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float) -> str | _Close:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            return _Close(output.get("code"))
        assert output["type"] == "websocket.send", f"expected a frame, got {output}"
        return output["text"]

    async def close(self) -> None:
        await self.communicator.disconnect()


class _Network:
    """A real server: a `websockets` client connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def send(self, text: str) -> None:
        await self.connection.send(text)

    async def receive(self, timeout: float) -> str | _Close:
        from websockets.exceptions import ConnectionClosed

        try:
            return await asyncio.wait_for(self.connection.recv(), timeout)
        except ConnectionClosed as closed:
            return _Close(closed.rcvd.code if closed.rcvd else None)

    async def close(self) -> None:
        await self.connection.close()


class _Close:
    def __init__(self, code: int | None) -> None:
        self.code = code


class Socket:
    """One browser tab's /ws connection, as a test drives it."""

    def __init__(self, transport: _Asgi | _Network, subprotocol: str | None = None) -> None:
        self._transport = transport
        self.subprotocol = subprotocol
        self.welcome: dict[str, Any] | None = None

    @property
    def communicator(self) -> Any:
        """The in-process socket's WebsocketCommunicator (to cancel its application)."""
        assert isinstance(self._transport, _Asgi), "not an in-process socket"
        return self._transport.communicator

    async def send(self, message: dict[str, Any] | str) -> None:
        """A JSON frame (a str is sent as it is: malformed frames are tests too)."""
        await self._transport.send(message if isinstance(message, str) else json.dumps(message))

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        received = await self._transport.receive(timeout)
        assert not isinstance(received, _Close), f"closed with {received.code}, not a frame"
        return json.loads(received)

    async def receive_type(self, type: str, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        frame = await self.receive(timeout)
        assert frame["type"] == type, f"expected {type}, got {frame}"
        return frame

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a command and return the next frame (the reply, for a quiet socket)."""
        await self.send(message)
        return await self.receive()

    async def subscribe(self, room: str) -> dict[str, Any]:
        """Follow a chat room; returns its chat.history frame."""
        history = await self.request({"type": "subscribe.chat", "room": room, "ref": "sub"})
        assert (history["type"], history.get("ref")) == ("chat.history", "sub"), history
        return history

    async def post(self, room: str, text: str, ref: str = "p") -> dict[str, Any]:
        """Post to a chat room; returns the poster's own chat.message.posted (its ack)."""
        posted = await self.request(
            {"type": "chat.message.post", "room": room, "text": text, "ref": ref}
        )
        assert (posted["type"], posted.get("ref")) == ("chat.message.posted", ref), posted
        return posted

    async def receive_events(
        self, count: int, timeout: float = RECEIVE_TIMEOUT
    ) -> list[dict[str, Any]]:
        """The next `count` persisted events (frames with an id), skipping ephemeral ones."""
        events: list[dict[str, Any]] = []
        while len(events) < count:
            frame = await self.receive(timeout)
            if "id" in frame:
                events.append(frame)
        return events

    async def receive_until(
        self, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Frames until `done(frame)` holds for one (included); at most `timeout` s."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frames.append(await self.receive(timeout))
                if done(frames[-1]):
                    return frames

    async def ping(self, ref: str = "sync") -> list[dict[str, Any]]:
        """Everything that arrives before the pong to this ping."""
        await self.send({"type": "ping", "ref": ref})
        frames = await self.receive_until(lambda f: (f["type"], f.get("ref")) == ("pong", ref))
        return frames[:-1]

    async def assert_nothing_more(self) -> None:
        """A ping round trip: a frame queued for this socket would arrive before the pong
        (the consumer handles one message at a time, in order)."""
        before = await self.ping()
        assert before == [], f"unexpected frames {before}"

    async def receive_close(
        self, timeout: float = RECEIVE_TIMEOUT
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Frames until the server closes; returns the close code and those frames."""
        frames = []
        while True:
            received = await self._transport.receive(timeout)
            if isinstance(received, _Close):
                return received.code, frames
            frames.append(json.loads(received))

    async def close(self) -> None:
        await self._transport.close()


def ws_path(*, token: str | None = None, query: str = "") -> str:
    params = [p for p in (f"token={token}" if token else "", query) if p]
    return "/ws" + ("?" + "&".join(params) if params else "")


def ws_url(base_url: str, *, token: str | None = None, query: str = "") -> str:
    """The /ws URL of a real server whose HTTP base URL is `base_url`."""
    return base_url.replace("http://", "ws://", 1) + ws_path(token=token, query=query)


async def open_in_process(
    *,
    token: str | None = None,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> Socket:
    """A socket to taskhub.asgi's application in this process (not past its welcome)."""
    from channels.testing import WebsocketCommunicator

    from taskhub.asgi import application  # Django must be set up: imported on use

    communicator = WebsocketCommunicator(
        application, ws_path(token=token, query=query), headers=headers or [],
        subprotocols=subprotocols,
    )  # fmt: skip
    connected, subprotocol = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    assert connected, "the handshake was refused"
    return Socket(_Asgi(communicator), subprotocol)


async def open_network(
    base_url: str, *, token: str | None = None, query: str = "", **options: Any
) -> Socket:
    """A socket to a real server (not past its welcome); `options` go to websockets'
    connect (origin, subprotocols, additional_headers...). No keepalive pings: a test
    decides what the server hears."""
    from websockets.asyncio.client import connect

    options.setdefault("open_timeout", RECEIVE_TIMEOUT)
    options.setdefault("ping_interval", None)
    connection = await connect(ws_url(base_url, token=token, query=query), **options)
    return Socket(_Network(connection), connection.subprotocol)


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = RECEIVE_TIMEOUT,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """devserver.testing.wait_until for a test on an event loop: poll `predicate` until it
    is truthy; fail after `timeout` s. A sync predicate runs on asgiref's one sync thread
    (it may query the database; the `connect` fixture closes that thread's connection)."""
    from asgiref.sync import sync_to_async

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if inspect.iscoroutinefunction(predicate):
            value = await predicate()
        else:
            value = await sync_to_async(predicate)()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(interval)
