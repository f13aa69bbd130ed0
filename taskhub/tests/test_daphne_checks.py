"""Daphne's periodic checks of every connection (reap finished applications, cancel those
that outlive their close timeout, timeouts and keepalive pings) still visit each
connection once per period, but in turns of at most CHECKS_PER_TURN spread over it, not
all in one turn of the event loop (taskhub/daphne_server.py; at 5,000 sockets one turn
held every delivery up for 40-90 ms, docs/benchmarks.md).

As in test_daphne_connections_freed, the server runs in a child process (importing Daphne
installs Twisted's reactor) and is driven through in-memory transports; the reactor is
not started, so the test calls the checkers as the reactor would and reads the delay of
the next call they schedule.
"""

from __future__ import annotations

import pytest

from devserver import testing

CHILD = r"""
import asyncio, json
import django
django.setup()
from taskhub import daphne_server
from taskhub.daphne_server import TaskHubServer  # first: it installs Daphne's reactor
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

daphne_server.CHECKS_PER_TURN = 2
stubborn = []  # applications that ignore the disconnect


async def app(scope, receive, send):
    if scope["type"] == "http":  # fails after its response started
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("a bug after the response started")
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    if scope["query_string"] == b"stubborn":
        stubborn.append(asyncio.current_task())
        await asyncio.sleep(3600)
    while (await receive())["type"] != "websocket.disconnect":
        pass


class Transport(StringTransport):
    def lose(self):
        protocol = self.protocol
        del self.protocol
        protocol.connectionLost(Failure(ConnectionDone()))


scheduled = []
reactor.callLater = lambda delay, function, *a, **k: scheduled.append((delay, function.__name__))
reactor.run = lambda **kwargs: None
server = TaskHubServer(
    application=app,
    endpoints=["tcp:port=0:interface=127.0.0.1"],
    signal_handlers=False,
    application_close_timeout=0,
)
server.run()
loop = asyncio.get_event_loop()
scheduled.clear()


def open_socket(query=b""):
    transport = Transport(
        IPv4Address("TCP", "127.0.0.1", 8000), IPv4Address("TCP", "127.0.0.1", 50000)
    )
    protocol = server.http_factory.buildProtocol(transport.getPeer())
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET /ws?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return transport


def settle():
    loop.run_until_complete(asyncio.sleep(0.05))


out = {}
sockets = [open_socket() for _ in range(5)]
settle()
# The upgrade requests were reaped by no checker yet: 5 requests + 5 WebSockets.
out["open"] = len(server.connections)

visits = []
classes = (WebSocketProtocol, WebRequest)
checks = {cls: cls.check_timeouts for cls in classes}
for cls in classes:
    cls.check_timeouts = lambda self, cls=cls: (visits.append(id(self)), checks[cls](self))[1]
out["timeout_turns"] = []
for _ in range(5):
    before = len(visits)
    server.timeout_checker()
    out["timeout_turns"].append([len(visits) - before, scheduled.pop()[0]])
for cls in classes:
    cls.check_timeouts = checks[cls]
out["timeout_visits"] = len(visits)
out["timeout_connections_visited"] = len(set(visits))

for transport in sockets:
    transport.lose()
settle()
out["reap_turns"] = []
while True:
    server.application_checker()
    out["reap_turns"].append([len(server.connections), scheduled.pop()[0]])
    if not server.connections or len(out["reap_turns"]) > 20:
        break

transport = open_socket(b"stubborn")
settle()
transport.lose()
for _ in range(4):  # one round (2 connections, 1 turn) cancels it, the next reaps it
    server.application_checker()
    settle()
out["stubborn_cancelled"] = stubborn[0].cancelled()
out["left"] = len(server.connections)

# A visit that raises is logged and the checks go on (in Daphne, one exception ended
# them for good: nothing reaped, pinged or timed out again, and nothing logged).
import logging
failures = []
handler = logging.Handler()
handler.emit = lambda record: failures.append(record.getMessage())
logging.getLogger("daphne.server").addHandler(handler)
broken, healthy = open_socket(), open_socket()
settle()
broken_protocol = broken.protocol
def fail():
    raise RuntimeError("a bug in one connection's check")
broken_protocol.check_timeouts = fail
visited = []
healthy.protocol.check_timeouts = lambda: visited.append(True)
scheduled.clear()
for _ in range(2):  # one round: 4 connections (2 requests, 2 WebSockets) in turns of 2
    server.timeout_checker()
out["after_a_failing_visit"] = {
    "turns_scheduled": len(scheduled),
    "healthy_visited": len(visited),
    "logged": [message for message in failures if "failed" in message],
}

# An HTTP application that fails after its response started: Daphne's answer to a failed
# application (a 500) raises then. It is reaped anyway, and its failure logged once.
transport = Transport(
    IPv4Address("TCP", "127.0.0.1", 8000), IPv4Address("TCP", "127.0.0.1", 50001)
)
protocol = server.http_factory.buildProtocol(transport.getPeer())
transport.protocol = protocol
protocol.makeConnection(transport)
protocol.dataReceived(b"GET /boom HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
settle()
failures.clear()
for _ in range(6):  # a few rounds (5 connections in turns of 2)
    server.application_checker()
out["failed_after_start"] = {
    "logged": sum("Exception inside application" in message for message in failures),
    "still_held": "application_instance" in server.connections.get(protocol, {}),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def child() -> dict:
    return testing.python_child_json(CHILD)


def test_the_timeout_checks_visit_every_connection_once_per_period_in_small_turns(child):
    assert child["open"] == 10
    # 10 connections in turns of 2, each turn 0.4 s after the last: Daphne's 2 s period.
    assert child["timeout_turns"] == [[2, 0.4]] * 5
    assert child["timeout_visits"] == child["timeout_connections_visited"] == 10


def test_closed_connections_are_reaped_two_per_turn_within_the_period(child):
    # 10 connections in turns of 2, each turn 0.2 s after the last (1 s period): the
    # number left goes down by 2 a turn, and after 5 turns (one period) none is left.
    assert child["reap_turns"] == [[8, 0.2], [6, 0.2], [4, 0.2], [2, 0.2], [0, 0.2]]


def test_an_application_that_outlives_its_close_timeout_is_cancelled_and_reaped(child):
    assert child["stubborn_cancelled"] is True
    assert child["left"] == 0


def test_a_check_that_raises_is_logged_and_the_checks_go_on(child):
    after = child["after_a_failing_visit"]
    assert after["turns_scheduled"] == 2
    assert after["healthy_visited"] == 1
    assert len(after["logged"]) == 1


def test_an_application_failing_after_its_response_started_is_reaped_and_logged_once(child):
    assert child["failed_after_start"] == {"logged": 1, "still_held": False}
