"""A lean socket tier for TaskHub's /ws: the design that would pass issue 10's socket
targets, as a prototype measured in the same harness as the product and the bare
reference (docs/benchmarks.md, "The design that would pass: a lean socket tier").

**A measurement artefact, not product code.** It is not routed, deployed or tested as
the product is; it exists to show what the hot path of a socket costs on `websockets`
(asyncio, as bench/ref_ws.py) instead of Daphne/autobahn + the Channels consumer, with
TaskHub's own protocol and data. It runs with Django set up and reuses the project's
modules rather than copying them:

- auth: what `notifications.middleware.user_from_token` does (simplejwt's AccessToken
  with the project's SIMPLE_JWT settings: signature, expiry, token type; then the
  active-user check through the middleware's process cache and `selectors.aactive_user`,
  the batched psycopg read on the consumer's per-loop pool), with the token's check done
  once per token string until it expires (`VerifiedTokens`);
- the Origin check of `notifications.middleware.WebsocketOriginValidator` (its
  `valid_origin`, against ALLOWED_HOSTS; no Origin is allowed, as there);
- the connection registry: `services.connection_register`'s Lua script, keys and
  arguments (the same atomic per-user cap; here the registrations of one event-loop
  turn go out in one pipeline, see `Registrations`), `connection_refresh_many` every
  WS_PRESENCE_REFRESH, and `connection_unregister_many` in batches;
- the `welcome` frame and every other frame: `notifications.protocol` envelopes, the
  consumer's welcome fields;
- delivery: the Redis pub/sub channel PubSubChannelLayer uses for the user's group (the
  layer's own naming and msgpack serializer, as notifications/push.py publishes), so the
  project's real publish path (services.publish -> push after commit) reaches it;
- resume (`?last_event_id=` and the `resume` frame) and gap fills: the consumer's reads
  in notifications/selectors.py (`anewest_event_id`, `aoldest_event_id`, here batched
  as the newest already is, `aevent_frames_after`) on the Event table, with the
  consumer's rules: ids only
  increase, none twice, a gap is read from the log, an id from the future means "from
  the newest", `events_pruned` when retention took some.

What it drops (the Channels consumer machinery and autobahn): Daphne's Twisted/autobahn
handshake and ASGI message passing, the channel layer's per-consumer specific channel and
its second SUBSCRIBE, Channels' dispatch (a user's channel stays subscribed for
UNSUBSCRIBE_GRACE after their last socket closes, so a reconnect storm does not
unsubscribe and subscribe again every user); and, for brevity, what the scale figures do not
exercise: the idle timeout, the per-socket rate limit and bad-frame count (frames are
still size-limited), task.progress coalescing, the chat commands (answered
`unavailable`), session-cookie auth, the periodic catch-up sweep and the deactivated-user
sweep (a pub/sub reconnect does catch every socket up from the log; `session.revoked`
closes with 4401).

Run by the harness: `python -m bench.proto_socket_tier --port N` in the stack's
environment (DATABASE_URL, REDIS_URL, SECRET_KEY, DJANGO_SETTINGS_MODULE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse, urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")

import django

django.setup()

import redis.asyncio as aioredis  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import AnonymousUser  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.http11 import Request, Response  # noqa: E402

from bench.loadgen import raise_open_file_limit  # noqa: E402
from notifications import middleware, protocol, selectors, services  # noqa: E402
from notifications.consumers import (  # noqa: E402
    CLOSE_SERVICE_UNAVAILABLE,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHENTICATED,
    BadFrame,
    decode_message,
    parse_event_id,
)
from notifications.models import Event  # noqa: E402
from notifications.redis_client import async_redis  # noqa: E402
from taskhub.instance import instance_name  # noqa: E402

logger = logging.getLogger("bench.proto_socket_tier")

# consumers.EventConsumer.session_revoked's message type (middleware names it in the tree
# being edited; the literal is the fallback for a tree without the name).
SESSION_REVOKED = getattr(middleware, "SESSION_REVOKED", "session.revoked")
# Gap fills whose log reads have not finished may hold at most this many frames each.
HELD_MAX = 10_000
# Seconds a user's channel stays subscribed after their last socket closed (Hub.leave).
UNSUBSCRIBE_GRACE = 10.0


def _text(frame: dict[str, Any]) -> str:
    # As EventConsumer.send_frame encodes.
    return json.dumps(frame, separators=(",", ":"), default=str)


class VerifiedTokens:
    """middleware.user_from_token with the token's check done once per token string: the
    user id and expiry of every access token verified so far (signature, expiry, type:
    simplejwt's AccessToken, as there), so a client that reconnects with the same token
    (every client of a reconnect storm) costs a dict lookup and the expiry compared, not
    a signature check; PyJWT's HMAC key preparation alone was 6 % of this tier's CPU in a
    storm session. The user's active check runs on every connect, as there (its process
    cache and batched read). Bounded: cleared when it reaches MAX entries."""

    MAX = 100_000

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Any, float]] = {}

    async def user(self, raw_token: str) -> Any:
        entry = self.entries.get(raw_token)
        if entry is None or entry[1] <= time.time():
            entry = middleware.token_user_id(raw_token)
            if entry is None:
                return AnonymousUser()
            if len(self.entries) >= self.MAX:
                self.entries.clear()
            self.entries[raw_token] = entry
        return await middleware.active_user(entry[0])


_tokens = VerifiedTokens()


# selectors.aoldest_event_id for every resume of one event-loop turn, in one query (as
# selectors.anewest_event_id is batched): a storm's resumes were one round trip each.
_OLDEST_MANY = (
    f"SELECT user_id, min(seq) FROM {Event._meta.db_table}"  # noqa: S608 (a model's table)
    " WHERE user_id = ANY(%s) GROUP BY user_id"
)


async def _oldest_event_ids(user_ids: list[int]) -> dict[int, int]:
    rows = await selectors._fetch(_OLDEST_MANY, [user_ids])
    return {user_id: int(oldest) for user_id, oldest in rows}


async def oldest_event_id(user_id: int) -> int | None:
    return await selectors._batched("oldest", int(user_id), _oldest_event_ids)


class Registrations:
    """services.connection_register for every socket that connects in the same turn of
    the event loop, in one pipeline: the project's script, keys and arguments (so the same
    atomic per-user cap), one round trip and one pooled connection for the batch. The
    consumer's one-call-per-socket took 29 % of this tier's connect CPU in a profile,
    most of it waiting on redis-py's BlockingConnectionPool (its lock and condition);
    the reads in notifications/selectors.py are batched the same way (`_batched`)."""

    def __init__(self) -> None:
        self.pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def register(self, *, user_id: int, channel_name: str) -> bool:
        keys = [selectors.user_connections_key(user_id), selectors.CONNECTIONS_KEY]
        args = services._registry_args(
            channel_name=channel_name, limit=settings.TASKHUB_WS_MAX_CONNECTIONS_PER_USER
        )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.pending:
            loop.call_soon(self._start)
        self.pending.append((keys, args, future))
        # Shielded: a socket that goes away must not cancel the others' batch.
        return bool(await asyncio.shield(future))

    def _start(self) -> None:
        batch, self.pending = self.pending, []
        task = asyncio.ensure_future(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        client = async_redis()
        script = services._register_scripts.get(client)
        if script is None:
            script = services._register_scripts[client] = client.register_script(
                services._REGISTER_SCRIPT
            )
        try:
            async with client.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    await script(keys=keys, args=args, client=pipe)  # buffered
                results = await pipe.execute()
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: a socket that went logs nothing
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


class Socket:
    """One open socket: the newest persisted id it was sent, and frames held while its
    log is being read (None once live). No task and no timer of its own."""

    __slots__ = ("channel_name", "closed", "filling", "held", "last_id", "user", "ws")

    def __init__(self, ws: ServerConnection, user: Any) -> None:
        self.ws = ws
        self.user = user
        self.channel_name = f"proto.{uuid.uuid4().hex}"
        self.last_id = 0
        self.held: list[dict[str, Any]] | None = []
        self.filling: asyncio.Task[None] | None = None
        self.closed = False

    async def send(self, frame: dict[str, Any], text: str | None = None) -> None:
        if not self.closed:
            await self.ws.send(text if text is not None else _text(frame))

    async def error(self, code: str, detail: str, *, ref: Any = None) -> None:
        data: dict[str, Any] = {"code": code, "detail": detail}
        frame = protocol.envelope(protocol.ERROR, data)
        if ref is not None:
            data["ref"] = frame["ref"] = ref
        await self.send(frame)

    # --- delivery: the consumer's rules (notifications/consumers.py, module docstring) ----

    async def offer(self, frame: dict[str, Any], text: str) -> None:
        """A pushed frame, from the hub's reader (one at a time, in publish order)."""
        if self.held is not None:
            if len(self.held) >= HELD_MAX:  # a fill that cannot keep up: resume from the log
                self.held = [self.held[0]]
            self.held.append(frame)
            return
        event_id = frame.get("id")
        if event_id is None or frame.get("type") not in protocol.PERSISTED_TYPES:
            await self.send(frame, text)
            return
        if event_id <= self.last_id:
            return
        if event_id == self.last_id + 1:
            self.last_id = event_id
            await self.send(frame, text)
            return
        # A gap: earlier pushes were lost; they are committed, so read them from the log
        # (in a task: the hub's reader must not wait on one socket's query).
        self.held = [frame]
        self.filling = asyncio.ensure_future(self.drain())

    async def from_log(self, before_id: int | None = None) -> None:
        """Send the log's events after last_id (below before_id), in pages."""
        while not self.closed:
            frames = await selectors.aevent_frames_after(
                user_id=self.user.pk, after_id=self.last_id, before_id=before_id
            )
            for frame in frames:
                self.last_id = frame["id"]
                await self.send(frame)
            if len(frames) < selectors.EVENT_PAGE_MAX:
                return

    async def _put(self, frame: dict[str, Any]) -> None:
        """A held frame, sent with this socket's log reads to itself (held is not None)."""
        event_id = frame.get("id")
        if event_id is None or frame.get("type") not in protocol.PERSISTED_TYPES:
            await self.send(frame)
            return
        if event_id <= self.last_id:
            return
        if event_id > self.last_id + 1:
            await self.from_log(before_id=event_id)
        self.last_id = event_id
        await self.send(frame)

    async def drain(self, *, log_first: bool = False) -> None:
        """Send what the log has (when asked) and every held frame, then go live. Frames
        pushed meanwhile are held, so the order holds; live again only with none left."""
        try:
            if log_first:
                await self.from_log()
            rounds = 0
            while self.held and rounds < 1000:  # each round sends what came during the last
                rounds += 1
                pending, self.held = self.held, []
                for frame in pending:
                    await self._put(frame)
            if self.held:  # still not caught up after 1,000 rounds: start over from the log
                self.held = []
                await self.from_log()
            self.held = None
        except ConnectionClosed:
            self.held = None  # gone meanwhile: its handler cleans up
        except Exception:
            logger.warning("delivery failed for user %s; closing", self.user.pk, exc_info=True)
            self.held = None
            await self.ws.close(CLOSE_SERVICE_UNAVAILABLE)

    async def resume(self, after_id: int, *, ref: Any) -> None:
        """EventConsumer._resume_from: every persisted event after `after_id`, in order."""
        if self.filling is not None and not self.filling.done():
            await self.filling  # one log reader at a time
        self.held = self.held if self.held is not None else []
        newest = await selectors.anewest_event_id(user_id=self.user.pk)
        after_id = min(after_id, newest)
        oldest = await oldest_event_id(self.user.pk)
        if after_id < newest and (oldest is None or oldest > after_id + 1):
            await self.error(
                "events_pruned",
                "Some events after last_event_id are no longer kept; re-read the state "
                "over the REST API. The events still kept follow.",
                ref=ref,
            )
        self.last_id = after_id
        await self.drain(log_first=True)


class Hub:
    """The process's pub/sub connections (one per layer shard) and which sockets listen on
    which group channel; the registry's renewal and batched release."""

    def __init__(self) -> None:
        layer = get_channel_layer()
        if not isinstance(layer, RedisPubSubChannelLayer):
            raise SystemExit("proto_socket_tier needs the pub/sub channel layer")
        self.layer = layer
        # The layer's per-loop half, never run: group channel names and shards exactly as
        # group_send (and notifications/push.py) compute them.
        self.naming = RedisPubSubLoopLayer(*layer._args, **layer._kwargs, channel_layer=layer)
        self.clients: list[aioredis.Redis] = []
        self.pubsubs: list[Any] = []
        for shard in self.naming._shards:
            options = {k: v for k, v in shard.host.items() if k != "address"}
            # A subscriber waits for messages for minutes: no read timeout (the layer's
            # socket_timeout would end an idle listen()).
            options.pop("socket_timeout", None)
            options.pop("max_connections", None)
            client = aioredis.Redis.from_url(shard.host["address"], **options)
            self.clients.append(client)
            self.pubsubs.append(client.pubsub(ignore_subscribe_messages=True))
        self.listeners: dict[str, set[Socket]] = {}
        # Since when each channel with no listener has had none; it is still subscribed.
        # Subscribed = those with listeners and those here.
        self.unheard: dict[str, float] = {}
        self.sockets: set[Socket] = set()
        self.to_release: list[tuple[int, str]] = []
        self.releaser: asyncio.Task[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.registrations = Registrations()

    async def start(self, stop: asyncio.Future[None]) -> None:
        for index, pubsub in enumerate(self.pubsubs):
            # listen() ends when nothing is subscribed; a channel nobody publishes on keeps it.
            await pubsub.subscribe(f"{self.naming.prefix}proto:keepalive")
            self.tasks.append(asyncio.ensure_future(self._read(index, stop)))
        self.tasks.append(asyncio.ensure_future(self._refresh(stop)))
        self.tasks.append(asyncio.ensure_future(self._unsubscribe_unheard(stop)))

    def _shard(self, channel: str) -> int:
        return self.naming._shards.index(self.naming._get_shard(channel))

    async def _read(self, index: int, stop: asyncio.Future[None]) -> None:
        pubsub = self.pubsubs[index]
        while not stop.done():  # ends with the process
            try:
                async for message in pubsub.listen():
                    await self._dispatch(message)
            except Exception:
                logger.warning("pub/sub reader lost Redis; catching every socket up", exc_info=True)
                await asyncio.sleep(0.5)
                # redis-py re-subscribes on its next read; pushes in between are gone
                # (the product's layer.reconnected): every socket reads the log.
                for sock in list(self.sockets):
                    if sock.held is None and not sock.closed:
                        sock.held = []
                        sock.filling = asyncio.ensure_future(sock.drain(log_first=True))

    async def _dispatch(self, message: dict[str, Any]) -> None:
        listeners = self.listeners.get(message["channel"].decode())
        if not listeners:
            return
        payload = self.layer.deserialize(message["data"])
        if payload.get("type") == SESSION_REVOKED:
            for sock in list(listeners):
                await sock.error("unauthenticated", "This account is no longer active.")
                middleware.forget_user(sock.user.pk)
                await sock.ws.close(CLOSE_UNAUTHENTICATED)
            return
        frame = payload.get("frame")
        if payload.get("type") != "event.push" or not isinstance(frame, dict):
            return
        text = _text(frame)  # encoded once for every socket of the user
        for sock in list(listeners):
            try:
                await sock.offer(frame, text)
            except Exception:  # a socket closing under us: its handler cleans up
                listeners.discard(sock)

    async def join(self, sock: Socket) -> None:
        channel = self.naming._get_group_channel_name(protocol.user_group(sock.user.pk))
        subscribed = channel in self.listeners or self.unheard.pop(channel, None) is not None
        self.listeners.setdefault(channel, set()).add(sock)
        self.sockets.add(sock)
        if not subscribed:
            await self.pubsubs[self._shard(channel)].subscribe(channel)

    def leave(self, sock: Socket) -> None:
        """The channel's subscription outlives its last socket by UNSUBSCRIBE_GRACE (see
        `_unsubscribe_unheard`): a reconnect storm closes and reopens every socket within
        seconds, and 5,000 UNSUBSCRIBEs then 5,000 SUBSCRIBEs, one command each, were a
        share of the storm's CPU; a user who comes back in time finds it still there."""
        self.sockets.discard(sock)
        channel = self.naming._get_group_channel_name(protocol.user_group(sock.user.pk))
        listeners = self.listeners.get(channel)
        if listeners is None:
            return
        listeners.discard(sock)
        if not listeners:
            del self.listeners[channel]
            self.unheard[channel] = time.monotonic()

    async def _unsubscribe_unheard(self, stop: asyncio.Future[None]) -> None:
        """Every second: the channels nobody has listened to for UNSUBSCRIBE_GRACE, in one
        UNSUBSCRIBE per shard. A push to such a channel meanwhile finds no listener and is
        dropped, as it would be unsubscribed; the user's next socket reads the log."""
        while not stop.done():  # ends with the process
            await asyncio.sleep(1.0)
            cutoff = time.monotonic() - UNSUBSCRIBE_GRACE
            due = [channel for channel, since in self.unheard.items() if since < cutoff]
            by_shard: dict[int, list[str]] = {}
            for channel in due:
                del self.unheard[channel]
                by_shard.setdefault(self._shard(channel), []).append(channel)
            for index, channels in by_shard.items():
                try:
                    await self.pubsubs[index].unsubscribe(*channels)
                    # A user who came back while the UNSUBSCRIBE was on its way: their
                    # join's SUBSCRIBE may have gone first; subscribing twice is harmless.
                    again = [channel for channel in channels if channel in self.listeners]
                    if again:
                        await self.pubsubs[index].subscribe(*again)
                except Exception:
                    logger.warning("unsubscribe of %d channels failed", len(channels))

    def release(self, sock: Socket) -> None:
        """Its registry entry goes with every other socket closing now, in one pipeline."""
        self.to_release.append((sock.user.pk, sock.channel_name))
        if self.releaser is None:
            self.releaser = asyncio.ensure_future(self._release())

    async def _release(self) -> None:
        try:
            while self.to_release:  # each round takes everything queued so far
                await asyncio.sleep(0)
                batch, self.to_release = self.to_release, []
                try:
                    await services.connection_unregister_many(batch)
                except Exception:  # entries go stale on their own (3 x refresh)
                    logger.warning("releasing %d registry entries failed", len(batch))
        finally:
            self.releaser = None

    async def _refresh(self, stop: asyncio.Future[None]) -> None:
        every = settings.TASKHUB_WS_PRESENCE_REFRESH
        while not stop.done():  # ends with the process
            await asyncio.sleep(every)
            entries = [(s.user.pk, s.channel_name) for s in self.sockets if not s.closed]
            if entries:
                try:
                    await services.connection_refresh_many(entries)
                except Exception:
                    logger.warning("registry renewal failed", exc_info=True)


_origin_check = middleware.WebsocketOriginValidator(None)


def origin_ok(ws: ServerConnection) -> bool:
    origin = ws.request.headers.get("Origin")  # type: ignore[union-attr]
    if origin is None:
        return True
    _origin_check.allowed_origins = list(settings.ALLOWED_HOSTS)
    try:
        parsed = urlparse(origin)
    except ValueError:
        return False
    return bool(_origin_check.valid_origin(parsed))


def select_subprotocol(ws: ServerConnection, subprotocols: list[str]) -> str | None:
    """The offered subprotocol that carries the JWT (middleware.token_subprotocol)."""
    return middleware.token_subprotocol({"subprotocols": subprotocols})


def only_ws_path(ws: ServerConnection, request: Request) -> Response | None:
    if urlsplit(request.path).path not in ("/ws", "/ws/"):
        return ws.respond(404, "Not found\n")
    return None


def welcome(sock: Socket) -> dict[str, Any]:
    # EventConsumer._welcome's fields.
    return protocol.envelope(
        protocol.WELCOME,
        {
            "user": {"id": sock.user.pk, "username": sock.user.get_username()},
            "server_version": settings.TASKHUB_SERVER_VERSION,
            "protocol_version": protocol.PROTOCOL_VERSION,
            "last_event_id": sock.last_id,
            "idle_timeout": settings.TASKHUB_WS_IDLE_TIMEOUT,
            "server": instance_name(),
        },
    )


async def refuse(ws: ServerConnection, code: int, error: str, detail: str) -> None:
    await ws.send(_text(protocol.envelope(protocol.ERROR, {"code": error, "detail": detail})))
    await ws.close(code)


async def handle(ws: ServerConnection, hub: Hub) -> None:
    if not origin_ok(ws):
        await ws.close(middleware.CLOSE_FORBIDDEN_ORIGIN)
        return
    query = parse_qs(urlsplit(ws.request.path).query)  # type: ignore[union-attr]
    raw_token = (query.get("token") or [None])[0] or ws.subprotocol
    user = await _tokens.user(raw_token) if raw_token else None
    if user is None or not user.is_authenticated:
        await refuse(
            ws, CLOSE_UNAUTHENTICATED, "unauthenticated", "A valid token or session is required."
        )
        return
    sock = Socket(ws, user)
    try:
        registered = await hub.registrations.register(
            user_id=user.pk, channel_name=sock.channel_name
        )
    except Exception:
        logger.exception("registry write failed for user %s", user.pk)
        await ws.close(CLOSE_SERVICE_UNAVAILABLE)
        return
    if not registered:
        limit = settings.TASKHUB_WS_MAX_CONNECTIONS_PER_USER
        detail = f"At most {limit} open connections per user."
        await refuse(ws, CLOSE_TOO_MANY, "too_many_connections", detail)
        return
    try:
        try:
            # Join before reading the log: what the read misses is pushed to us (and held).
            await hub.join(sock)
            sock.last_id = await selectors.anewest_event_id(user_id=user.pk)
            await sock.send(welcome(sock))
        except ConnectionClosed:
            return
        except Exception:
            logger.exception("websocket setup failed for user %s", user.pk)
            await ws.close(CLOSE_SERVICE_UNAVAILABLE)
            return
        if "last_event_id" in query:
            try:
                after_id = parse_event_id(query["last_event_id"][0], from_url=True)
            except BadFrame as bad:
                await sock.error(bad.code, bad.detail)
                await sock.drain()
            else:
                await sock.resume(after_id, ref=None)
        else:
            await sock.drain()  # whatever was pushed between the join and the welcome
        async for text in ws:  # until the client goes
            await receive(sock, text)
    except ConnectionClosed:
        # A client gone without a close handshake (its network dropped: every socket of a
        # reconnect storm) is no error of ours. Left to websockets, each logged a
        # traceback: 9.5 % of this tier's CPU in a storm session, formatted while the
        # clients were reconnecting.
        pass
    finally:
        sock.closed = True
        if sock.filling is not None:
            sock.filling.cancel()
        hub.leave(sock)
        hub.release(sock)


async def receive(sock: Socket, text: str | bytes) -> None:
    ref = None
    try:
        message = decode_message(text if isinstance(text, str) else None)
        ref = message.get("ref")
        if message["type"] == protocol.PING:
            frame = protocol.envelope(protocol.PONG, {})
            if ref is not None:
                frame["ref"] = ref
            await sock.send(frame)
        elif message["type"] == protocol.RESUME:
            after_id = parse_event_id(message.get("last_event_id"), ref=ref)
            await sock.resume(after_id, ref=ref)
        elif message["type"] in protocol.PLUGGABLE_COMMANDS:
            await sock.error("unavailable", "Not in this prototype.", ref=ref)
        else:
            raise BadFrame("unknown_type", f"Unknown message type {message['type']!r}.", ref)
    except BadFrame as bad:
        await sock.error(bad.code, bad.detail, ref=bad.ref)
    except Exception:
        logger.exception("websocket handler failed for user %s", sock.user.pk)
        await sock.error("internal", "The server could not handle this.", ref=ref)


async def serve_forever(port: int) -> None:
    raise_open_file_limit()
    # Django's LOGGING puts the root logger at INFO: websockets would log two lines per
    # socket (opened, closed), a cost per connect that neither Daphne nor ref_ws pays.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    hub = Hub()
    await hub.start(stop)
    async with serve(
        lambda ws: handle(ws, hub),
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=None,
        max_size=settings.TASKHUB_WS_MAX_FRAME_BYTES,
        select_subprotocol=select_subprotocol,
        process_request=only_ws_path,
    ):
        print(f"proto_socket_tier listening on 127.0.0.1:{port}", flush=True)
        await stop
    for task in hub.tasks:
        task.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve_forever(parser.parse_args().port))
