"""The web process: Daphne's own command line, with three things its options do not reach.

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
  reactor accepts a connection.
* A request line (or a header line) over Twisted's 16 KiB line limit gets an answer,
  414 URI Too Long (431 for a header), instead of a dropped connection with none:
  LineReceiver's lineLengthExceeded, which HTTPChannel does not override, only closes the
  transport (issue 13, S1).
* The access log goes through taskhub.redaction: `/ws?token=<jwt>` (and any other
  credential in a request line) is written as [redacted].

docker-compose.yml, the Dockerfile and devserver/processes.py start web with this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

# daphne.cli imports daphne.server first, which installs Twisted's asyncio reactor before
# anything else can import another one.
from daphne.access import AccessLogGenerator
from daphne.cli import CommandLineInterface
from daphne.server import Server

from taskhub.redaction import redact


class RedactingAccessLog(AccessLogGenerator):
    """Daphne's NCSA-style access log with credentials in the request line redacted."""

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        super().write_entry(host, date, redact(request), status, length, ident, user)


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

    def _configure(self) -> None:
        # Called by Server.run() right after it built self.ws_factory, before reactor.run().
        self.ws_factory.setProtocolOptions(failByDrop=False)
        build = self.http_factory.buildProtocol

        def build_protocol(addr: Any) -> Any:
            protocol = build(addr)
            # Twisted wraps the HTTPChannel for HTTP/2 negotiation; the line limit is its.
            channel = getattr(protocol, "_channel", protocol)
            channel.lineLengthExceeded = lambda line: _line_too_long(channel)
            return protocol

        self.http_factory.buildProtocol = build_protocol
        if self._then_ready is not None:
            self._then_ready()


def _line_too_long(channel: Any) -> None:
    """Answer a line over the limit, then close, as Twisted's own 400 for headers over
    totalHeadersSize does. Still on the request line (HTTPChannel's private first-line
    flag) it is the URI that is too long, else one header."""
    first_line = getattr(channel, "_HTTPChannel__first_line", 1)
    status = b"414 URI Too Long" if first_line else b"431 Request Header Fields Too Large"
    channel.transport.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\n\r\n")
    channel.transport.loseConnection()


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
