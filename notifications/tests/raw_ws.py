"""A raw-frame WebSocket client for tests that must send what no library will: frames
that lie about their length, text frames holding invalid UTF-8, and so on (RFC 6455 §5).

Blocking sockets with timeouts: the tests using it drive one connection at a time.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from dataclasses import dataclass

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame_header(opcode: int, length: int, *, fin: bool = True, mask: bytes) -> bytes:
    """The header of a client (masked) frame announcing `length` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length]) + mask
    if length < 1 << 16:
        return bytes([first, 0x80 | 126]) + struct.pack("!H", length) + mask
    return bytes([first, 0x80 | 127]) + struct.pack("!Q", length) + mask


def masked(payload: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class ServerFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]


class ConnectionDropped(AssertionError):
    """The server closed the TCP connection without (another) frame."""


class RawWebSocket:
    def __init__(self, host: str, port: int, path: str, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status, f"handshake refused: {head!r}"

    @classmethod
    def connect(cls, base_url: str, path: str) -> RawWebSocket:
        host, port = base_url.removeprefix("http://").split(":")
        return cls(host, int(port), path)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionDropped("the server closed the TCP connection")
        self.buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        mask = os.urandom(4)
        header = frame_header(opcode, len(payload), fin=fin, mask=mask)
        self.sock.sendall(header + masked(payload, mask))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> ServerFrame:
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        return ServerFrame(first & 0x0F, self._take(length))

    def receive_close(self) -> ServerFrame:
        """Frames until the server's close frame (ConnectionDropped if none comes)."""
        while True:
            frame = self.receive()
            if frame.opcode == OP_CLOSE:
                return frame

    def close(self) -> None:
        self.sock.close()
