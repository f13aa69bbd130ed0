"""A real HTTP receiver on 127.0.0.1 and the receiver's side of the signature, taken from
docs/webhooks.md itself (so the documented snippet is the one the tests trust)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings

DOCS = Path(settings.BASE_DIR) / "docs" / "webhooks.md"


def documented_verifier() -> Callable[..., bool]:
    """verify_taskhub_signature, exec'd from the Python block of docs/webhooks.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    (snippet,) = [block for block in blocks if "def verify_taskhub_signature" in block]
    namespace: dict = {}
    exec(compile(snippet, str(DOCS), "exec"), namespace)  # noqa: S102 (our own docs)
    return namespace["verify_taskhub_signature"]


verify_taskhub_signature = documented_verifier()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (the last one repeats), checks its
    signature with `secret` as a receiver would, and keeps what it got."""

    url: str
    answers: list[int]
    secret: str = ""
    requests: list[Received] = field(default_factory=list)
    extra_headers: dict[str, str] = field(default_factory=dict)

    def next_status(self) -> int:
        index = min(len(self.requests), len(self.answers) - 1)
        return self.answers[index]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="", answers=[200])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                status = state.next_status()
                state.requests.append(
                    Received(
                        path=self.path,
                        headers=dict(self.headers),
                        body=body,
                        signature_valid=verify_taskhub_signature(
                            state.secret, self.headers.get("X-TaskHub-Signature", ""), body
                        ),
                    )
                )
            self.send_response(status)
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(f"answer {status}".encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def allow_private(settings) -> None:
    """WEBHOOK_ALLOW_PRIVATE=1, as the tests' receivers listen on 127.0.0.1."""
    settings.TASKHUB_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def private_refused(settings) -> None:
    """The production rule: no loopback, private or link-local addresses."""
    settings.TASKHUB_WEBHOOK_ALLOW_PRIVATE = False


@pytest.fixture
def sent_messages(monkeypatch) -> list[tuple[str, float | None]]:
    """The deliver messages services send after commit, instead of Celery."""
    from webhooks import queue

    sent: list[tuple[str, float | None]] = []
    monkeypatch.setattr(
        queue,
        "send_deliver",
        lambda delivery_id, countdown=None: sent.append((str(delivery_id), countdown)),
    )
    return sent
