"""A request line or header over Twisted's 16 KiB line limit gets an answer from the web
process (414, 431) instead of a connection dropped with none (issue 13, S1;
taskhub/daphne_server.py)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.e2e]


def raw_request(base_url: str, request: bytes) -> bytes:
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_20_kb_url_answers_414(daphne_server):
    answer = raw_request(
        daphne_server, b"GET /api/tasks/?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n")


def test_a_20_kb_header_answers_431(daphne_server):
    answer = raw_request(
        daphne_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


def test_an_ordinary_request_on_the_same_server_is_answered(daphne_server):
    answer = raw_request(
        daphne_server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 200")
