"""A closed connection of the web process is freed by reference counting, as it closes, not
left in a reference cycle for the cyclic GC (taskhub/daphne_server.py; issue 13, R6).

In a cycle, every closed connection waited for a full collection, which CPython runs
rarely once Django is loaded: about 1,500 connections' worth of garbage piled up and the
heap grew to hold it (R6: +15 MiB of RSS; docs/reliability.md). Memory itself is measured
by the reliability runner, never here: this checks what caused it, that nothing of a
closed connection outlives it with the cyclic GC turned off.

The server runs in a child process: importing Daphne installs Twisted's asyncio reactor,
and the check turns the GC off, neither of which belongs in the test process. The child
builds TaskHub's Daphne Server as `run()` does (its reactor is not started), and drives
connections through in-memory transports that end as a TCP connection does.
"""

from __future__ import annotations

import pytest

from devserver import testing

CHILD = r"""
import asyncio, gc, json, weakref
gc.disable()
import django
django.setup()
from taskhub.daphne_server import TaskHubServer  # first: it installs Daphne's reactor
from daphne.http_protocol import WebRequest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


class Transport(StringTransport):
    def lose(self):
        # What twisted.internet.tcp.Connection.connectionLost does.
        self.producer = None
        protocol = self.protocol
        del self.protocol
        protocol.connectionLost(Failure(ConnectionDone()))


reactor.run = lambda **kwargs: None  # run() builds the factories and configures them
server = TaskHubServer(
    application=app, endpoints=["tcp:port=0:interface=127.0.0.1"], signal_handlers=False
)
server.run()
loop = asyncio.get_event_loop()


def connect():
    transport = Transport(
        IPv4Address("TCP", "127.0.0.1", 8000), IPv4Address("TCP", "127.0.0.1", 50000)
    )
    protocol = server.http_factory.buildProtocol(transport.getPeer())
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def settle():
    loop.run_until_complete(asyncio.sleep(0.05))
    server.application_checker()  # Daphne's reaper of finished connections


refs = {}
protocol, transport = connect()
refs["HTTP channel"] = weakref.ref(protocol._channel)
transport.lose()
settle()
del protocol, transport

protocol, transport = connect()
refs["channel upgraded to a WebSocket"] = weakref.ref(protocol._channel)
protocol.dataReceived(
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
refs["upgrade request"] = weakref.ref(  # until the reaper's next round
    next(p for p in server.connections if isinstance(p, WebRequest))
)
settle()
assert b" 101 Switching Protocols" in transport.value(), transport.value()
refs["WebSocket protocol"] = weakref.ref(transport.protocol)
transport.lose()
settle()
del protocol, transport

alive = sorted(name for name, ref in refs.items() if ref() is not None)
gc.collect()
print(json.dumps({
    "alive": alive,
    "alive_after_gc": sorted(name for name, ref in refs.items() if ref() is not None),
    "connections": len(server.connections),
}))
"""


@pytest.fixture(scope="module")
def child() -> dict:
    return testing.python_child_json(CHILD)


def test_the_check_tracks_every_object_it_names_and_daphne_let_go_of_them(child):
    # Nothing but garbage holds them (a full collection frees them all), and Daphne's
    # table of connections is empty: the check is about cycles, not a live reference.
    assert child["alive_after_gc"] == []
    assert child["connections"] == 0


def test_a_closed_connection_is_freed_without_the_cyclic_gc(child):
    assert child["alive"] == [], (
        f"still alive with the GC off, so in a reference cycle: {child['alive']}"
    )
