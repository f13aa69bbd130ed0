"""The web process: Daphne's own command line, with what its options do not reach.

    python -m taskhub.daphne_server -b 127.0.0.1 -p 8000 taskhub.asgi:application

Every `daphne` option works as documented; this adds (docs/protocol.md, "Limits"):

* Frames and messages over WS_MAX_FRAME_BYTES are refused by autobahn as their header
  arrives, before any of the payload is buffered: the defaults of
  --websocket-max-frame-size and --websocket-max-message-size become
  settings.TASKHUB_WS_MAX_FRAME_BYTES (Daphne's own default is 1 MiB, and the consumer
  only sees a message once it is whole).
* A connection autobahn fails (too big: 1009, invalid UTF-8 in a text frame: 1007, a
  protocol error: 1002) gets a close frame with that code. autobahn's servers default to
  failByDrop, which drops the TCP connection instead, so a client saw a reset and no
  reason; Daphne exposes no option for it. It is set on Daphne's WebSocket factory through
  the Server's `ready_callable`, which Daphne calls once the factory exists and before the
  reactor accepts a connection. A close frame that is itself invalid (a reserved code,
  a one-byte payload, a reason that is not UTF-8) is answered the same way: autobahn
  queues its 1002/1007 close, then takes the bad close for the reply to it and aborts the
  TCP connection in the same call, discarding the frame it just queued; the protocol here
  (ClosingWebSocketProtocol) lets that close go out first (issue 13, R6).
* A request line (or a header line) over Twisted's 16 KiB line limit gets an answer,
  414 URI Too Long (431 for a header), instead of a dropped connection with none:
  LineReceiver's lineLengthExceeded, which HTTPChannel does not override, only closes the
  transport (issue 13, S1).
* A request body over MAX_REQUEST_BYTES is answered 413 with a JSON message as soon as
  the headers declare it (Content-Length), or once a chunked body passes the limit, and
  nothing of it is kept: Twisted buffers a request's whole body before Daphne calls the
  ASGI application, so no ASGI code could stop it (taskhub/body_limit.py).
* An open WebSocket's frame is written to the kernel at once when nothing is queued
  before it (send_now), as asyncio's transports do; Twisted's write always queues it for
  a later turn of the event loop, which was a quarter of Daphne's time delivering 1,000
  events/s to 5,000 sockets.
* Each connection's application reads its input from a LeanQueue, not an asyncio.Queue
  (taskhub/lean_queue.py): a WebSocket holds that queue for its whole life, nearly
  always empty, and asyncio.Queue's four empty deques were about 3 KiB of the socket.
  Once a WebSocket is open, what autobahn and Daphne kept of its opening handshake (about
  4 KiB) is let go (ClosingWebSocketProtocol.onOpen).
* The access log goes through taskhub.redaction: `/ws?token=<jwt>` (and any other
  credential in a request line) is written as [redacted].
* A closed connection is freed by reference counting once Daphne lets go of it (its
  checks reap it within a second, and their current round may hold it 2 s more), not
  left in a reference cycle: the line-limit hook holds its channel weakly, and two
  cycles of the libraries' are broken (autobahn's is_closed Deferred keeps the protocol
  as its result; Twisted's HTTPChannel keeps the request Daphne upgraded to a WebSocket
  in its queue, and that request keeps the channel). In cycles, closed connections
  waited for a full collection of the cyclic GC, which CPython holds back until the
  survivors of younger collections reach a quarter of what the last full one kept: 2
  full collections in R6's 10,000 malformed frames, up to 750 closed connections alive
  at once, and the heap grew to hold them (+15 MiB of RSS; issue 13,
  docs/reliability.md, R6).

The line limit and the body limit rely on two private names of Twisted's (HTTPChannel's
first-line flag, the HTTP/1.1 channel inside the protocol that negotiates HTTP/2):
the server refuses to start when they are missing, rather than answering wrong.

docker-compose.yml, the Dockerfile and devserver/processes.py start web with this module.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

# daphne.cli imports daphne.server first, which installs Twisted's asyncio reactor before
# anything else can import another one.
from daphne.access import AccessLogGenerator
from daphne.cli import CommandLineInterface
from daphne.http_protocol import WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import abstract, reactor, tcp
from twisted.web import http

from taskhub import body_limit
from taskhub.lean_queue import LeanQueue
from taskhub.redaction import redact

# How long a connection answered 413 may go on sending the body it declared (discarded)
# before it is cut: long enough for an ordinary client to read the answer.
LINGER_SECONDS = 10
# How long a WebSocket whose closing handshake is over may take to read our close frame.
CLOSE_LINGER_SECONDS = 5
# Connections Daphne's periodic checks visit in one turn of the event loop (see
# TaskHubServer.application_checker); a turn of 500 takes a few milliseconds.
CHECKS_PER_TURN = 500

logger = logging.getLogger("daphne.server")  # where Daphne's own checker logs


class RedactingAccessLog(AccessLogGenerator):
    """Daphne's NCSA-style access log with credentials in the request line redacted."""

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        super().write_entry(host, date, redact(request), status, length, ident, user)


class ClosingWebSocketProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol, except that the TCP abort which ends a closing
    handshake started by the peer's close frame first sends what is queued.

    A server ends the handshake with an abort (RST) once the peer's close has arrived.
    When that close was invalid, autobahn answers it with a 1002/1007 close *in the same
    call*, then sees a close "in reply" and aborts, dropping the answer unsent. Here the
    transport is closed gracefully instead (loseConnection flushes the answer), and
    aborted after CLOSE_LINGER_SECONDS if the peer leaves it unread.
    """

    _in_peer_close = False
    _linger: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # autobahn fires is_closed with the protocol itself, and a fired Deferred keeps its
        # result: protocol -> is_closed -> protocol, a cycle that only the cyclic GC frees.
        # It fires with None here (Daphne and TaskHub never wait on it).
        self.is_closed.addCallback(_forget)

    def onOpen(self) -> None:
        super().onOpen()
        # The opening handshake is over, but autobahn keeps its request for the socket's
        # life (the raw bytes, the status line, the URI, the header and query dicts) and
        # Daphne keeps autobahn's request object, which holds the same dicts: about 4 KiB
        # per socket. Nothing reads them once the socket is open, except Daphne's log
        # lines, which want the path. (The scope keeps its own query string and headers.)
        self.request = _OpenedRequest(self.request.path)
        for name in _HANDSHAKE_KEPT_BY_AUTOBAHN:
            setattr(self, name, None)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        self._in_peer_close = True
        try:
            return super().onCloseFrame(code, reasonRaw)
        finally:
            self._in_peer_close = False

    def _closeConnection(self, abort: bool = False) -> None:
        if abort and self._in_peer_close:
            transport = self.transport
            transport.loseConnection()
            self._linger = reactor.callLater(CLOSE_LINGER_SECONDS, transport.abortConnection)
            return
        super()._closeConnection(abort)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """autobahn's sendData, except that an open socket's frame goes to the kernel at
        once when nothing is queued before it (send_now), as asyncio's own transports do.
        Everything else (the handshake, a chopped or synchronous send, a queue already
        waiting, octet logging) goes autobahn's way."""
        if (
            sync
            or chopsize
            or self.send_queue
            or self.logOctets
            or self.state != WebSocketProtocol.STATE_OPEN
            or not send_now(self.transport, data)
        ):
            super().sendData(data, sync, chopsize)
            return
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    def connectionLost(self, reason: Any) -> None:
        # Closed in time: drop the timer, and with it the transport it holds.
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)


# What autobahn's server protocol keeps of the opening handshake; it reads them only while
# it processes the handshake.
_HANDSHAKE_KEPT_BY_AUTOBAHN = (
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_params",
)


class _OpenedRequest:
    """The part of autobahn's ConnectionRequest that Daphne reads after the handshake."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def send_now(transport: Any, data: bytes) -> bool:
    """Write `data` to a plain TCP connection now if nothing is queued before it; True
    when the transport took it (all sent, or the rest queued behind what was sent).

    Twisted's write never sends: it queues, asks the event loop to watch the socket for
    writability (an epoll change), sends on a later turn, and stops watching (another),
    each turn wrapped in Twisted's logging context. Delivering 1,000 events/s to 5,000
    sockets, that path was a quarter of Daphne's time (docs/benchmarks.md, "Delivery:
    the young generation and the housekeeping turns"). A socket whose queue is empty can
    almost always take a frame at once, which is what asyncio's transports and the bare
    reference server do. False, with nothing sent, for anything else: TLS, a UNIX
    socket, a queue not empty, a connection closing or lost (Twisted's own write then
    finds out as usual)."""
    if (
        type(transport) is not tcp.Server
        or transport.TLS
        or not transport.connected
        or transport.disconnecting
        or transport._aborting
        or transport._writeDisconnected
        or transport._tempDataLen
        or len(transport.dataBuffer) != transport.offset
    ):
        return False
    sent = transport.writeSomeData(data)
    if isinstance(sent, Exception):  # the connection is lost: nothing was sent
        return False
    if sent < len(data):
        transport.write(data[sent:])  # the kernel's buffer is full: the rest waits
    return True


class TaskHubServer(Server):
    """Daphne's Server, closing failed WebSockets with a code and logging redacted lines."""

    def __init__(
        self,
        *args: Any,
        action_logger: Callable[..., None] | None = None,
        ready_callable: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(action_logger, AccessLogGenerator) and not isinstance(
            action_logger, RedactingAccessLog
        ):
            action_logger = RedactingAccessLog(action_logger.stream)
        self._then_ready = ready_callable
        super().__init__(
            *args, action_logger=action_logger, ready_callable=self._configure, **kwargs
        )
        self._application_rounds = _Rounds(self._check_application, period=1.0)
        self._timeout_rounds = _Rounds(self._check_timeouts, period=2.0)

    def _configure(self) -> None:
        # Called by Server.run() right after it built self.ws_factory, before reactor.run().
        self.ws_factory.setProtocolOptions(failByDrop=False)
        self.ws_factory.protocol = ClosingWebSocketProtocol
        build = self.http_factory.buildProtocol
        _check_twisted_private_names(build(None))

        def build_protocol(addr: Any) -> Any:
            protocol = build(addr)
            # Twisted wraps the HTTPChannel for HTTP/2 negotiation; the line limit is its.
            # A weak reference: a closure over the channel, kept by the channel, would be a
            # reference cycle, and every connection would wait for the cyclic GC.
            channel = weakref.ref(protocol._channel)
            protocol._channel.lineLengthExceeded = lambda line: _line_too_long(channel())
            protocol.requestFactory = BodyLimitedRequest
            return protocol

        self.http_factory.buildProtocol = build_protocol
        if self._then_ready is not None:
            self._then_ready()

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> LeanQueue:
        """Start the ASGI application for a new connection and return the queue its
        receive() reads: Daphne's method, with a LeanQueue for that queue instead of an
        asyncio.Queue (taskhub/lean_queue.py: a WebSocket holds it for its whole life,
        nearly always empty, and asyncio.Queue's empty deques cost about 3 KiB of it)."""
        details = self.connections[protocol]
        if "application_instance" in details:  # Daphne asserts this
            raise RuntimeError(f"{protocol!r} has an application already")
        input_queue = LeanQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        instance = self.application(
            scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
        )
        # Daphne's loop argument: this runs in a Twisted callback on the asyncio reactor.
        details["application_instance"] = asyncio.ensure_future(
            instance, loop=asyncio.get_event_loop()
        )
        return input_queue

    # Daphne visits every connection in one turn of the loop: application_checker every
    # second (reap finished applications, cancel those past their close timeout) and
    # timeout_checker every two (timeouts, keepalive pings). At 5,000 sockets those turns
    # held every delivery up for about 40 and 90 ms (docs/benchmarks.md, "Delivery: the
    # collector's pauses"). Here each visits the connections in turns of at most
    # CHECKS_PER_TURN spread over the period (a connection opened during a round waits for
    # the next one: up to two periods instead of one), and a visit that raises is logged
    # instead of ending the checks for good, as it did in Daphne.

    def application_checker(self) -> None:
        try:
            self._application_rounds.turn(self.connections)
        finally:
            reactor.callLater(self._application_rounds.delay, self.application_checker)

    def timeout_checker(self) -> None:
        try:
            self._timeout_rounds.turn(self.connections)
        finally:
            reactor.callLater(self._timeout_rounds.delay, self.timeout_checker)

    def _check_timeouts(self, protocol: Any) -> None:
        if protocol in self.connections:  # not gone since this round began
            protocol.check_timeouts()

    def _check_application(self, protocol: Any) -> None:
        """What Daphne's application_checker does for one connection."""
        details = self.connections.get(protocol)
        if details is None:  # gone since this round began
            return
        disconnected = details.get("disconnected")
        instance = details.get("application_instance")
        if (
            disconnected
            and instance is not None
            and not instance.done()
            and time.time() - disconnected > self.application_close_timeout
        ):
            logger.warning(
                "Application instance %r for connection %s took too long to shut down "
                "and was killed.",
                instance,
                repr(protocol),
            )
            instance.cancel()
        if instance is not None and instance.done():
            failure = None if instance.cancelled() else instance.exception()
            # Reaped before its failure is handled: the handler raises on an HTTP response
            # already started, and must not run again every round.
            del details["application_instance"]
            instance = None
            if isinstance(failure, KeyboardInterrupt):  # the application asks us to exit
                self.stop()
            elif failure is not None:
                logger.error("Exception inside application: %s", failure, exc_info=failure)
                if not disconnected:
                    protocol.handle_exception(failure)
        if instance is None and disconnected:
            del self.connections[protocol]


class _Rounds:
    """A periodic visit of every connection, in turns of at most CHECKS_PER_TURN spread
    evenly over the period. A round covers the connections open at its start (one that
    closed since is skipped by the visit, and freed once the round is over); the next
    round starts when it is done. `delay` is the time from this turn to the next."""

    def __init__(self, visit: Callable[[Any], None], period: float) -> None:
        self.visit = visit
        self.period = period
        self.pending: list[Any] = []
        self.delay = period

    def turn(self, connections: dict[Any, Any]) -> None:
        if not self.pending:
            # Not weak references: building 5,000 of them a round was 3 % of Daphne's time.
            self.pending = list(connections)
            self.pending.reverse()  # popped from the end: in Daphne's order
            turns = max(1, math.ceil(len(self.pending) / CHECKS_PER_TURN))
            self.delay = self.period / turns
        for _ in range(min(CHECKS_PER_TURN, len(self.pending))):
            protocol = self.pending.pop()
            try:
                self.visit(protocol)
            except Exception:
                logger.exception("checking connection %r failed", protocol)


def _forget(result: Any) -> None:
    return None


def _line_too_long(channel: Any) -> None:
    """Answer a line over the limit, then close, as Twisted's own 400 for headers over
    totalHeadersSize does. Still on the request line (HTTPChannel's private first-line
    flag) it is the URI that is too long, else one header."""
    first_line = channel._HTTPChannel__first_line
    status = b"414 URI Too Long" if first_line else b"431 Request Header Fields Too Large"
    channel.transport.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\n\r\n")
    channel.transport.loseConnection()


def _check_twisted_private_names(protocol: Any) -> None:
    """Fail at startup, not on the first long line or frame, if a Twisted upgrade renamed
    them."""
    queue_state = ("TLS", "connected", "disconnecting", "_aborting", "_writeDisconnected")
    if not all(hasattr(tcp.Server, name) for name in (*queue_state, "dataBuffer", "offset")) or (
        "_tempDataLen" not in abstract.FileDescriptor.__init__.__code__.co_names
    ):
        raise RuntimeError(
            "taskhub.daphne_server: this Twisted's TCP transport keeps its write queue in "
            "other names; send_now needs them (pin Twisted, or adapt taskhub/daphne_server.py)"
        )
    channel = getattr(protocol, "_channel", None)
    if not isinstance(channel, http.HTTPChannel) or not hasattr(
        channel, "_HTTPChannel__first_line"
    ):
        raise RuntimeError(
            "taskhub.daphne_server: this Twisted's HTTP protocol has no _channel "
            "(an HTTPChannel) or no HTTPChannel.__first_line; the 414/431 answers and the "
            "body limit need both (pin Twisted, or adapt taskhub/daphne_server.py)"
        )


class BodyLimitedRequest(WebRequest):
    """Daphne's request, refusing a body over the limit before Twisted buffers it.

    Twisted calls gotLength once the headers are in (with the Content-Length, or None for a
    chunked body) and handleContentChunk with each piece of the body; Daphne only calls the
    application after the last one (process())."""

    _refused = False
    _received = 0
    _linger: Any = None

    def _limit(self) -> int | None:
        # An HTTP/2 stream (TLS with h2 only) is left to the ASGI wrapper (taskhub/asgi.py):
        # it has no connection of its own to answer on.
        return body_limit.limit() if isinstance(self.channel, http.HTTPChannel) else None

    def gotLength(self, length: int | None) -> None:
        most = self._limit()
        if most is not None and length is not None and length > most:
            super().gotLength(0)
            # Else Twisted would send "100 Continue" right after the 413.
            self.requestHeaders.removeHeader(b"Expect")
            self._refuse(length, most)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused body: dropped
        self._received += len(data)
        most = self._limit()
        if most is not None and self._received > most:
            self.content.close()
            self._refuse(None, most)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered already: never reaches the application
        super().requestReceived(command, path, version)

    def process(self) -> None:
        super().process()
        channel = self.channel
        if self.transport is None and channel is not None and self in channel.requests:
            # Daphne handed the connection to a WebSocket protocol (it takes the request's
            # transport; nothing else sets it to None) and never finishes this request, so
            # the channel, no longer the connection's protocol, would keep it queued for
            # good: channel -> requests -> request -> channel, a cycle.
            channel.requests.remove(self)

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def _refuse(self, length: int | None, most: int) -> None:
        self._refused = True
        body = body_limit.json_body(length, most)
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        # Half-close: the client reads the answer and then end of file. A full close with
        # its body still arriving would reset the connection, and a reset can destroy the
        # answer before the client has read it. What it still sends is discarded (above)
        # for at most LINGER_SECONDS.
        from twisted.internet import reactor  # Daphne's, installed by now

        lose_write = getattr(transport, "loseWriteConnection", transport.loseConnection)
        lose_write()
        self._linger = reactor.callLater(LINGER_SECONDS, transport.abortConnection)


class TaskHubCommandLine(CommandLineInterface):
    description = "TaskHub's web process (Daphne)"
    server_class = TaskHubServer

    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
        from django.conf import settings

        limit = settings.TASKHUB_WS_MAX_FRAME_BYTES
        self.parser.set_defaults(websocket_max_frame_size=limit, websocket_max_message_size=limit)


def main(argv: list[str] | None = None) -> None:
    TaskHubCommandLine().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
