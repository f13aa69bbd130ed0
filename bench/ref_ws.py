"""The bare reference for TaskHub's /ws: `websockets` + `redis.asyncio` pub/sub, one
process, one channel per user, nothing else.

It does what the project's cheapest path does for a socket, no more:
- auth: the JWT in ?token= checked with the same key and algorithm as simplejwt (HS256,
  SECRET_KEY), without a database (the project looks the user up as well);
- subscribe to the user's channel *before* reading the newest id, then `welcome` with it
  (so an event published in between is not lost, as in the project's consumer);
- `last_event_id`: replay the user's Redis stream after that id, then go live, never
  sending an id twice or out of order (frames that arrive during the replay wait);
- one shared pub/sub connection for the whole process (a connection per socket would
  need 10,000 Redis clients, Redis's default maxclients).

Run by the harness: `python -m bench.ref_ws --port N` with REDIS_URL and SECRET_KEY set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, serve

from bench.loadgen import raise_open_file_limit
from bench.publishers import REF_CHANNEL, REF_LAST, REF_LOG


class Client:
    """One socket: the newest id it was sent, and frames held while a replay runs."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.last_id = 0
        self.held: list[tuple[int, str]] | None = []  # None once live

    async def send_event(self, event_id: int, text: str) -> None:
        if self.held is not None:
            self.held.append((event_id, text))
        elif event_id > self.last_id:
            self.last_id = event_id
            await self.ws.send(text)


class Hub:
    """The process's one pub/sub connection and which sockets listen on which channel."""

    def __init__(self, redis_url: str) -> None:
        # A blocking pool: a burst of connects waits for a free connection instead of
        # failing with MaxConnectionsError (redis-py's plain pool raises past its size).
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=100, timeout=30)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.clients: dict[str, set[Client]] = {}

    async def start(self) -> None:
        # listen() ends when nothing is subscribed; a channel nobody publishes on keeps it.
        await self.pubsub.subscribe("bench:ref:keepalive")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.pubsub.listen():
            channel = message["channel"].decode()
            listeners = self.clients.get(channel)
            if not listeners:
                continue
            text = message["data"].decode()
            event_id = json.loads(text)["id"]
            for client in list(listeners):
                try:
                    await client.send_event(event_id, text)
                except Exception:  # a socket closing under us: its handler cleans up
                    listeners.discard(client)

    async def join(self, channel: str, client: Client) -> None:
        listeners = self.clients.setdefault(channel, set())
        listeners.add(client)
        if len(listeners) == 1:
            await self.pubsub.subscribe(channel)

    async def leave(self, channel: str, client: Client) -> None:
        listeners = self.clients.get(channel)
        if listeners is None:
            return
        listeners.discard(client)
        if not listeners:
            del self.clients[channel]
            await self.pubsub.unsubscribe(channel)


def user_from_token(token: str | None, secret: str) -> int | None:
    if not token:
        return None
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        return None
    if claims.get("token_type") != "access" or "user_id" not in claims:
        return None
    return int(claims["user_id"])


async def handle(ws: ServerConnection, hub: Hub, secret: str) -> None:
    query = parse_qs(urlsplit(ws.request.path).query)  # type: ignore[union-attr]
    user_id = user_from_token((query.get("token") or [None])[0], secret)
    if user_id is None:
        await ws.close(4401, "unauthenticated")
        return
    channel = REF_CHANNEL.format(user_id)
    client = Client(ws)
    await hub.join(channel, client)
    try:
        newest = int(await hub.redis.get(REF_LAST.format(user_id)) or 0)
        after = query.get("last_event_id")
        client.last_id = min(int(after[0]), newest) if after else newest
        await ws.send(
            json.dumps(
                {"type": "welcome", "data": {"user": {"id": user_id}, "last_event_id": newest}}
            )
        )
        if after:
            await replay(hub, client, user_id)
        held, client.held = client.held or [], None
        for event_id, text in held:
            await client.send_event(event_id, text)
        await ws.wait_closed()
    finally:
        await hub.leave(channel, client)


async def replay(hub: Hub, client: Client, user_id: int) -> None:
    """Send the stream's events after client.last_id, in order (a page at a time)."""
    start = "-"
    while True:
        page: list[Any] = await hub.redis.xrange(REF_LOG.format(user_id), start, "+", count=500)
        for _stream_id, fields in page:
            text = fields[b"f"].decode()
            event_id = json.loads(text)["id"]
            if event_id > client.last_id:
                client.last_id = event_id
                await client.ws.send(text)
        if len(page) < 500:
            return
        start = "(" + page[-1][0].decode()


async def serve_forever(port: int) -> None:
    raise_open_file_limit()
    hub = Hub(os.environ["REDIS_URL"])
    await hub.start()
    secret = os.environ["SECRET_KEY"]
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        lambda ws: handle(ws, hub, secret), "127.0.0.1", port, compression=None, ping_interval=None
    ):
        print(f"ref_ws listening on 127.0.0.1:{port}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve_forever(parser.parse_args().port))
