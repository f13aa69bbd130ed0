"""The WebSocket consumer at /ws: one connection carries every event of one user.

Thin by design: it decodes frames, enforces the connection's limits and dispatches by
`type` to small handlers; reads and writes go through notifications.selectors/services
(via database_sync_to_async, never the sync ORM on the event loop). docs/protocol.md is
the client's view of all of this.

Delivery of persisted events (those with an `id`) — why none is sent twice or lost:

* Every persisted frame this socket sends goes through `_deliver_*` under
  `_delivery_lock`, which sends only ids greater than `_last_id` and in increasing order,
  then advances `_last_id`. So no id is sent twice (short of a `resume` that asks for
  it) and ids only increase.
* The user's event log is gap-free and commits in id order (EventCounter's row lock):
  once event N is committed, so is every event below N. A push happens after commit, so
  a live push N lets us read every missing event below N from the database first.
* The socket joins the user's group *before* it reads the log for the welcome/replay.
  An event the read does not see committed after the read began, so its after-commit
  push happens after the group join and is addressed to this socket. Pushes arriving
  while a replay runs wait in the channel layer (Channels dispatches one message at a
  time per consumer) and are then dropped (id <= _last_id) or delivered in order.
* A push that never arrives (Redis blip, channel over capacity) is noticed when the next
  push shows a gap, by the periodic catch-up (WS_CATCHUP_INTERVAL), or on reconnect
  with `last_event_id`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from notifications import protocol, selectors, services
from notifications.middleware import subprotocol_to_accept
from taskhub import metrics

logger = logging.getLogger(__name__)

# Close codes (design.md, "Event protocol").
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_IDLE = 4408
CLOSE_TOO_MANY = 4429
# RFC 6455 "try again later": a backing service (Redis, PostgreSQL) failed at connect.
CLOSE_TRY_AGAIN_LATER = 1013

# task.updated statuses after which a task sends no more progress (until a retry).
TERMINAL_TASK_STATUSES = frozenset({"completed", "failed", "cancelled"})

CHAT_MESSAGE_TYPES = frozenset(
    {"subscribe.chat", "unsubscribe.chat", "chat.message.post", "chat.message.edit", "chat.typing"}
)

_newest_event_id = database_sync_to_async(selectors.newest_event_id)
_oldest_event_id = database_sync_to_async(selectors.oldest_event_id)
_events_after = database_sync_to_async(selectors.events_after)


class BadFrame(Exception):
    """A client frame we answer with an `error` (code bad_request/unknown_type)."""

    def __init__(self, code: str, detail: str, ref: Any = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.ref = code, detail, ref


class TokenBucket:
    """`rate` tokens a second, holding at most `rate` (so a burst of `rate` is fine)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ProgressCoalescer:
    """At most one task.progress per task per PROGRESS_MIN_INTERVAL on this socket.

    Producers already throttle (ProcessorContext); this guards the socket against any
    producer that does not. A frame that comes too soon is held, and only the newest held
    one is sent when the interval is up (so the client always ends on the latest value).
    Progress of a task whose terminal task.updated went out is stale and dropped.
    """

    MAX_TRACKED = 1000

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._send = send
        self._interval = settings.TASKHUB_PROGRESS_MIN_INTERVAL
        self._last_sent: OrderedDict[str, float] = OrderedDict()
        self._held: dict[str, dict[str, Any]] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    async def offer(self, frame: dict[str, Any]) -> None:
        data = frame.get("data") or {}
        task_id = str(data.get("task_id", ""))
        if task_id in self._finished:
            return
        wait = self._last_sent.get(task_id, float("-inf")) + self._interval - time.monotonic()
        if wait <= 0:
            self._held.pop(task_id, None)
            await self._send_now(task_id, frame)
            return
        self._held[task_id] = frame
        if task_id not in self._timers:
            self._timers[task_id] = asyncio.ensure_future(self._flush_later(task_id, wait))

    async def _flush_later(self, task_id: str, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timers.pop(task_id, None)
        frame = self._held.pop(task_id, None)
        if frame is not None:
            await self._send_now(task_id, frame)

    async def _send_now(self, task_id: str, frame: dict[str, Any]) -> None:
        self._last_sent[task_id] = time.monotonic()
        self._last_sent.move_to_end(task_id)
        while len(self._last_sent) > self.MAX_TRACKED:
            self._last_sent.popitem(last=False)
        await self._send(frame)

    def task_updated(self, data: dict[str, Any]) -> None:
        """Follow task.updated: a terminal one ends the task's progress, a retry restarts it."""
        task_id = str(data.get("task_id", ""))
        if data.get("status") in TERMINAL_TASK_STATUSES:
            self._held.pop(task_id, None)
            timer = self._timers.pop(task_id, None)
            if timer is not None:
                timer.cancel()
            self._last_sent.pop(task_id, None)
            self._finished[task_id] = None
            while len(self._finished) > self.MAX_TRACKED:
                self._finished.popitem(last=False)
        else:
            self._finished.pop(task_id, None)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._held.clear()


class EventConsumer(AsyncWebsocketConsumer):
    """One user's socket. Other apps' handlers (chat.ws) use: `user`, `channel_name`,
    `send_frame`, `reply`, `reply_error`, `join_group`, `leave_group`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self._groups: set[str] = set()
        self._closed = False
        self._registered = False
        self._last_id = 0
        self._delivery_lock = asyncio.Lock()
        self._last_seen = time.monotonic()
        self._bad_frames = 0
        self._bucket = TokenBucket(settings.TASKHUB_WS_MAX_MESSAGES_PER_SECOND)
        self._progress = ProgressCoalescer(self.send_frame)
        self._housekeeping: asyncio.Task[None] | None = None
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Awaitable[None]]] = {
            "ping": self.handle_ping,
            "resume": self.handle_resume,
            **dict.fromkeys(CHAT_MESSAGE_TYPES, self.handle_chat),
        }

    # --- The API other apps' handlers use ------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one server -> client frame (an envelope) as JSON text."""
        if self._closed:
            return
        await self.send(text_data=json.dumps(frame, separators=(",", ":"), default=str))

    async def reply(self, type: str, data: dict[str, Any], *, ref: Any = None) -> None:
        """Send an ephemeral frame to this socket only, echoing the client's `ref`."""
        frame = protocol.envelope(type, data)
        if ref is not None:
            frame["ref"] = ref
        await self.send_frame(frame)

    async def reply_error(self, code: str, detail: str, *, ref: Any = None) -> None:
        data: dict[str, Any] = {"code": code, "detail": detail}
        if ref is not None:
            data["ref"] = ref
        await self.reply(protocol.ERROR, data, ref=ref)

    async def join_group(self, group: str) -> None:
        """Join a Channels group; every joined group is left on disconnect."""
        await self.channel_layer.group_add(group, self.channel_name)
        self._groups.add(group)

    async def leave_group(self, group: str) -> None:
        self._groups.discard(group)
        await self.channel_layer.group_discard(group, self.channel_name)

    # --- Connection lifecycle ------------------------------------------------------------

    async def connect(self) -> None:
        # Accept first, then close with a code the client can read (see middleware.py).
        await self.accept(subprotocol_to_accept(self.scope))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.reply_error("unauthenticated", "A valid token or session is required.")
            await self._close(CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        try:
            self._registered = await services.connection_register(
                user_id=user.pk, channel_name=self.channel_name
            )
            if not self._registered:
                limit = settings.TASKHUB_WS_MAX_CONNECTIONS_PER_USER
                await self.reply_error(
                    "too_many_connections", f"At most {limit} open connections per user."
                )
                await self._close(CLOSE_TOO_MANY)
                return
            # Join before reading the log: see "why none is lost" in the module docstring.
            await self.join_group(protocol.user_group(user.pk))
            async with self._delivery_lock:
                self._last_id = await _newest_event_id(user_id=user.pk)
            await self.send_frame(self._welcome())
        except Exception:
            logger.exception("websocket setup failed for user %s", user.pk)
            await self._close(CLOSE_TRY_AGAIN_LATER)
            return
        self._housekeeping = asyncio.ensure_future(self._keep_house())
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        if "last_event_id" in query:
            try:
                after_id = parse_event_id(query["last_event_id"][0], from_url=True)
            except BadFrame as bad:
                await self.reply_error(bad.code, bad.detail)
            else:
                await self._resume_from(after_id, ref=None)

    def _welcome(self) -> dict[str, Any]:
        return protocol.envelope(
            protocol.WELCOME,
            {
                "user": {"id": self.user.pk, "username": self.user.get_username()},
                "server_version": settings.TASKHUB_SERVER_VERSION,
                "protocol_version": protocol.PROTOCOL_VERSION,
                "last_event_id": self._last_id,
                "idle_timeout": settings.TASKHUB_WS_IDLE_TIMEOUT,
            },
        )

    async def disconnect(self, code: int) -> None:
        self._closed = True
        self._progress.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for group in list(self._groups):
            try:
                await self.leave_group(group)
            except Exception:  # group membership expires on its own (group_expiry)
                logger.warning("could not leave group %s", group, exc_info=True)
        if self._registered:
            self._registered = False
            try:
                await services.connection_unregister(
                    user_id=self.user.pk, channel_name=self.channel_name
                )
            except Exception:  # the entry goes stale and stops counting on its own
                logger.warning("could not unregister socket of %s", self.user.pk, exc_info=True)

    async def _close(self, code: int) -> None:
        if not self._closed:
            self._closed = True
            await self.close(code=code)

    async def _keep_house(self) -> None:
        """Idle timeout, the connection registry refresh, group renewal and catch-up."""
        idle_timeout = settings.TASKHUB_WS_IDLE_TIMEOUT
        refresh_every = settings.TASKHUB_WS_PRESENCE_REFRESH
        catchup_every = settings.TASKHUB_WS_CATCHUP_INTERVAL
        next_refresh = time.monotonic() + refresh_every
        next_catchup = time.monotonic() + catchup_every if catchup_every else float("inf")
        while not self._closed:
            now = time.monotonic()
            idle_deadline = self._last_seen + idle_timeout
            if now >= idle_deadline:
                await self.reply_error("idle", f"Nothing received for {idle_timeout:g} s.")
                await self._close(CLOSE_IDLE)
                return
            try:
                if now >= next_refresh:
                    next_refresh = now + refresh_every
                    await services.connection_refresh(
                        user_id=self.user.pk, channel_name=self.channel_name
                    )
                    # Re-adding renews the membership before channels_redis' group_expiry
                    # drops a long-lived socket from its groups.
                    for group in list(self._groups):
                        await self.channel_layer.group_add(group, self.channel_name)
                if now >= next_catchup:
                    next_catchup = now + catchup_every
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("websocket housekeeping failed; will retry", exc_info=True)
            wake_at = min(idle_deadline, next_refresh, next_catchup)
            await asyncio.sleep(max(0.05, wake_at - time.monotonic()))

    # --- Client -> server ----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closed:
            return
        self._last_seen = time.monotonic()
        size = len(bytes_data) if text_data is None else len(text_data.encode("utf-8"))
        max_bytes = settings.TASKHUB_WS_MAX_FRAME_BYTES
        if size > max_bytes:
            await self.reply_error("too_large", f"Frames are limited to {max_bytes} bytes.")
            await self._close(CLOSE_BAD_REQUEST)
            return
        if not self._bucket.take():
            rate = settings.TASKHUB_WS_MAX_MESSAGES_PER_SECOND
            await self.reply_error("rate_limited", f"At most {rate:g} messages per second.")
            await self._close(CLOSE_TOO_MANY)
            return
        ref = None
        try:
            message = decode_message(text_data)
            ref = message.get("ref")
            handler = self._handlers.get(message["type"])
            if handler is None:
                raise BadFrame("unknown_type", f"Unknown message type {message['type']!r}.", ref)
            await handler(message, ref)
        except BadFrame as bad:
            await self._bad_frame(bad)
        except Exception:
            # A bug or a failing backing service in one handler must not end the socket.
            logger.exception("websocket handler failed for user %s", self.user.pk)
            await self.reply_error("internal", "The server could not handle this.", ref=ref)

    async def _bad_frame(self, bad: BadFrame) -> None:
        self._bad_frames += 1
        await self.reply_error(bad.code, bad.detail, ref=bad.ref)
        if self._bad_frames >= settings.TASKHUB_WS_MAX_BAD_FRAMES:
            await self._close(CLOSE_BAD_REQUEST)

    async def handle_ping(self, message: dict[str, Any], ref: Any) -> None:
        await self.reply(protocol.PONG, {}, ref=ref)

    async def handle_resume(self, message: dict[str, Any], ref: Any) -> None:
        await self._resume_from(parse_event_id(message.get("last_event_id"), ref=ref), ref=ref)

    async def handle_chat(self, message: dict[str, Any], ref: Any) -> None:
        # Imported here: chat depends on notifications, never the other way round at import.
        try:
            from chat import ws as chat_ws
        except ModuleNotFoundError as exc:
            if exc.name not in ("chat.ws", "chat"):
                raise
            await self.reply_error("unavailable", "Chat is not available yet.", ref=ref)
            return
        await chat_ws.handle(self, message)

    # --- Server -> client: persisted events ----------------------------------------------

    async def _resume_from(self, after_id: int, *, ref: Any) -> None:
        """Send every persisted event after `after_id`, in order, then carry on live."""
        async with self._delivery_lock:
            newest = await _newest_event_id(user_id=self.user.pk)
            # An id we never handed out (another server's, a typo) cannot mean "seen up to
            # there": treating it as such would hide later events. Start from the newest.
            after_id = min(after_id, newest)
            oldest = await _oldest_event_id(user_id=self.user.pk)
            if after_id < newest and (oldest is None or oldest > after_id + 1):
                await self.reply_error(
                    "events_pruned",
                    "Some events after last_event_id are no longer kept; re-read the state "
                    "over the REST API. The events still kept follow.",
                    ref=ref,
                )
            self._last_id = after_id
            await self._deliver_from_log()

    async def _deliver_from_log(self, *, before_id: int | None = None) -> None:
        """Send the log's events after _last_id (and below before_id). Hold the lock."""
        while True:
            events = await _events_after(
                user_id=self.user.pk, after_id=self._last_id, before_id=before_id
            )
            for event in events:
                await self._deliver(selectors.event_frame(event))
            if len(events) < selectors.EVENT_PAGE_MAX:
                return

    async def _deliver(self, frame: dict[str, Any]) -> None:
        await self.send_frame(frame)
        self._last_id = frame["id"]
        metrics.EVENTS_DELIVERED.labels(type=frame["type"]).inc()
        if frame["type"] == protocol.TASK_UPDATED:
            self._progress.task_updated(frame.get("data") or {})

    async def _catch_up(self) -> None:
        """Deliver events whose push never arrived and that no later push revealed."""
        async with self._delivery_lock:
            newest = await _newest_event_id(user_id=self.user.pk)
            if newest > self._last_id:
                await self._deliver_from_log(before_id=newest + 1)

    # --- Group messages ------------------------------------------------------------------

    async def event_push(self, message: dict[str, Any]) -> None:
        """A frame for this socket from a group (user.<id>, a chat room...)."""
        if self._closed or self.user is None:
            return
        frame = message["frame"]
        if message.get("reply_to") == self.channel_name and message.get("ref") is not None:
            frame = {**frame, "ref": message["ref"]}
        event_id = frame.get("id")
        if event_id is None or frame.get("type") not in protocol.PERSISTED_TYPES:
            if frame.get("type") == protocol.TASK_PROGRESS:
                await self._progress.offer(frame)
            else:
                await self.send_frame(frame)
            return
        async with self._delivery_lock:
            if event_id <= self._last_id:
                return  # already sent by a replay, a catch-up or a gap fill
            if event_id > self._last_id + 1:
                # A gap: earlier pushes were lost. They are committed (see the docstring).
                await self._deliver_from_log(before_id=event_id)
            await self._deliver(frame)


def decode_message(text_data: str | None) -> dict[str, Any]:
    """A client frame as a dict with a string `type`, or BadFrame."""
    if text_data is None:
        raise BadFrame("bad_request", "Binary frames are not supported; send JSON text.")
    try:
        message = json.loads(text_data)
    except ValueError:
        raise BadFrame("bad_request", "The frame is not valid JSON.") from None
    if not isinstance(message, dict):
        raise BadFrame("bad_request", "The frame must be a JSON object.")
    ref = message.get("ref")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, str | int | float)):
        raise BadFrame("bad_request", "ref must be a string or a number.")
    if not isinstance(message.get("type"), str) or not message["type"]:
        raise BadFrame("bad_request", "The frame needs a string `type`.", ref)
    return message


def parse_event_id(value: Any, *, ref: Any = None, from_url: bool = False) -> int:
    """A client's last_event_id: a non-negative integer (in a URL, its digits)."""
    if from_url and isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadFrame("bad_request", "last_event_id must be a non-negative integer.", ref)
    return value
