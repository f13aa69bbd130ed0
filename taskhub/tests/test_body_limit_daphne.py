"""Against a real web process (taskhub/daphne_server.py): a body over MAX_REQUEST_BYTES is
answered 413 before the server reads it (issue 13, S1). Twisted buffers a whole body before
Daphne calls the application, so a server that read the body first would leave the tests
below waiting for an answer until their socket timeout: each sends the headers and at most
part of the body."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from conftest import access_token_for

pytestmark = [pytest.mark.e2e]

LIMIT = settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # MAX_REQUEST_BYTES, the same in the server


def exchange(base_url: str, head: bytes, body_chunks: Sequence[bytes] = ()) -> bytes:
    """Send `head` (and `body_chunks`, stopping once an answer is in); return everything
    the server wrote before closing. The timeout fails a server that waits for the body."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=15) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.settimeout(0.05)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                answer = None
            sock.settimeout(15)
            if answer is not None:
                return answer + read_to_end(sock)
            sock.sendall(chunk)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def split(answer: bytes) -> tuple[bytes, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)


def test_a_declared_length_over_the_limit_is_answered_without_sending_the_body(daphne_server):
    answer = exchange(
        daphne_server,
        b"POST /api/tasks/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n",
    )

    status, body = split(answer)
    assert status == b"HTTP/1.1 413 Content Too Large"
    assert body == {
        "detail": f"The request body is 10000000000 bytes; at most {LIMIT} are accepted."
    }


def test_a_multipart_upload_over_the_limit_is_refused_the_same_way(daphne_server):
    answer = exchange(
        daphne_server,
        b"POST /api/tasks/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n",
    )

    assert split(answer)[0] == b"HTTP/1.1 413 Content Too Large"


def test_curl_s_expect_100_continue_gets_the_413_and_no_100(daphne_server):
    answer = exchange(
        daphne_server,
        b"POST /api/tasks/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )

    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"100 Continue" not in answer


def test_a_chunked_body_is_answered_413_once_it_passes_the_limit(daphne_server):
    piece = b"x" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    # Twice the limit's worth of chunks, if the server never answered; it answers after 5.
    answer = exchange(
        daphne_server,
        b"POST /api/tasks/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        [chunk] * (2 * LIMIT // len(piece)),
    )

    status, body = split(answer)
    assert status == b"HTTP/1.1 413 Content Too Large"
    detail = f"The request body is over {LIMIT} bytes; at most {LIMIT} are accepted."
    assert body == {"detail": detail}


@pytest.mark.django_db(transaction=True)
def test_a_body_just_within_the_limit_reaches_the_view(daphne_server, alice):
    body = json.dumps({"title": "t", "kind": "echo", "params": {}, "description": "y" * 200_000})
    assert len(body) <= LIMIT
    head = (
        f"POST /api/tasks/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {access_token_for(alice)}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    answer = exchange(daphne_server, head + body.encode())

    # The view read it: the serializer refuses the 200,000-character description.
    status, errors = split(answer)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert "description" in json.dumps(errors)
