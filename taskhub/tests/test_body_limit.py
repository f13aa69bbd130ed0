"""A body over MAX_REQUEST_BYTES is refused with 413 and a JSON message that says the
limit (issue 13, S1): before, Django answered 400 with an HTML page. Here Django's test
client (the middleware) and the ASGI wrapper of taskhub/asgi.py; against a real Daphne,
where the body is refused before it is read: test_body_limit_daphne.py."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile

from taskhub.body_limit import BodyLimit

pytestmark = pytest.mark.django_db


def test_a_body_over_the_limit_answers_413_with_json(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"title": "big", "description": "x" * 4096})

    response = client_for(alice).post("/api/tasks/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json() == {
        "detail": f"The request body is {len(body)} bytes; at most 2048 are accepted."
    }


def test_a_body_within_the_limit_reaches_the_view(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"title": "small", "kind": "echo", "params": {}})

    response = client_for(alice).post("/api/tasks/", body, content_type="application/json")

    assert response.status_code == 201


def test_the_legacy_api_gets_the_same_413(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"title": "big", "description": "x" * 4096})

    response = client_for(alice).post("/task/create", body, content_type="application/json")

    assert response.status_code == 413


def test_a_multipart_body_over_the_limit_answers_413_too(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    upload = SimpleUploadedFile("big.bin", b"x" * 4096)

    response = client_for(alice).post("/api/tasks/", {"title": "big", "file": upload})

    assert response.status_code == 413


# The ASGI wrapper of taskhub/asgi.py, driven as an ASGI server drives it.


def run_asgi(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[list, list]:
    """Call BodyLimit around an application that reads the whole body; return what was sent
    to the client and what the application received."""
    received: list[dict] = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if received[-1]["type"] == "http.request":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"read"})

    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/tasks/", "headers": headers}
    async_to_sync(BodyLimit(app))(scope, receive, send)
    return sent, received


def test_the_asgi_wrapper_answers_413_from_content_length_without_calling_the_app(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"4096")]

    sent, received = run_asgi(headers, [b"x" * 4096])

    assert received == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {
        "detail": "The request body is 4096 bytes; at most 2048 are accepted."
    }


def test_the_asgi_wrapper_stops_a_chunked_body_at_the_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]

    sent, received = run_asgi(headers, [b"x" * 1024] * 10)

    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    assert json.loads(sent[1]["body"]) == {
        "detail": "The request body is over 2048 bytes; at most 2048 are accepted."
    }
    # Two chunks reached the application, then it was told the client had gone.
    assert [m["type"] for m in received] == ["http.request", "http.request", "http.disconnect"]


def test_the_asgi_wrapper_lets_a_body_within_the_limit_through(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048

    sent, received = run_asgi([(b"content-length", b"2048")], [b"x" * 1024, b"x" * 1024])

    assert sent[0]["status"] == 200
    assert b"".join(m["body"] for m in received) == b"x" * 2048
