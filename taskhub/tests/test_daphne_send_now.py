"""A WebSocket frame goes to the kernel at once when nothing is queued before it
(taskhub.daphne_server.send_now), and what the kernel cannot take yet is queued the
Twisted way, ahead of anything written after it: the bytes arrive whole and in order.

A real TCP connection on Daphne's own reactor, in a child process (importing Daphne
installs Twisted's reactor), as in test_daphne_connections_freed. A big write is always
taken in part (Twisted sends at most its SEND_LIMIT, 128 KiB, per call), and the client
reads only after the server has written everything, so the rest also waits for the
kernel's buffers to drain. What autobahn's sendData hands to send_now and what it keeps
for itself is exercised by every test that talks to a real Daphne.
"""

from __future__ import annotations

from devserver import testing

CHILD = r"""
import json, socket, threading, time
import django
django.setup()
from taskhub.daphne_server import send_now  # first: it installs Daphne's reactor
from twisted.internet import protocol, reactor

BIG = bytes(range(256)) * 64 * 1024  # 16 MiB: far more than the socket buffers hold
seen = {}


class Sender(protocol.Protocol):
    def connectionMade(self):
        transport = self.transport
        seen["small: sent at once"] = send_now(transport, b"hello|")
        seen["small: nothing queued"] = transport._tempDataLen == 0 and not transport.dataBuffer
        seen["big: taken"] = send_now(transport, BIG)
        seen["big: part queued"] = transport._tempDataLen > 0
        seen["after it: sent at once"] = send_now(transport, b"|tail")
        transport.write(b"|tail")  # what a caller does when send_now says no
        transport.loseConnection()  # after the queue is written


port = reactor.listenTCP(0, protocol.Factory.forProtocol(Sender), interface="127.0.0.1")
received = bytearray()


def client():
    with socket.create_connection(("127.0.0.1", port.getHost().port)) as sock:
        time.sleep(0.5)  # the server writes everything before anything is read
        while chunk := sock.recv(1 << 20):
            received.extend(chunk)
    reactor.callFromThread(reactor.stop)


threading.Thread(target=client, daemon=True).start()
reactor.callLater(60, reactor.stop)
reactor.run()
seen["bytes: all, in order"] = bytes(received) == b"hello|" + BIG + b"|tail"
seen["bytes received"] = len(received)
print(json.dumps(seen))
"""


def test_frames_go_out_at_once_and_a_partial_write_keeps_its_place_in_the_queue():
    seen = testing.python_child_json(CHILD)

    assert seen.pop("bytes received") == len(b"hello|") + 16 * 1024 * 1024 + len(b"|tail")
    assert seen == {
        "small: sent at once": True,
        "small: nothing queued": True,
        "big: taken": True,
        "big: part queued": True,
        "after it: sent at once": False,
        "bytes: all, in order": True,
    }
