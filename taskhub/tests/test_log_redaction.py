"""No token in any log (issue 13, S3; OWASP's WebSocket cheat sheet): a canary JWT used
over HTTP (`?token=`, `Authorization: Bearer`) and the WebSocket (`/ws?token=`, and as a
subprotocol) appears nowhere in what a real web process and a real Celery worker write,
access log included (taskhub/redaction.py)."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from conftest import access_token_for, wait_until_finished
from devserver import testing
from taskhub.redaction import REDACTED, RedactingFormatter, redact
from tasks.models import Task

CANARY_CLAIMS = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjYW5hcnkiOiJ5ZXMifQ.c2lnbmF0dXJl"


def test_redact_hides_query_tokens_jwts_and_bearer_credentials():
    assert redact(f"GET /ws?token={CANARY_CLAIMS}&last_event_id=4") == (
        f"GET /ws?token={REDACTED}&last_event_id=4"
    )
    assert redact("GET /x?a=1&access_token=opaque-secret HTTP/1.1") == (
        f"GET /x?a=1&access_token={REDACTED} HTTP/1.1"
    )
    assert CANARY_CLAIMS not in redact(f"header was {CANARY_CLAIMS!r}")
    assert redact("Authorization: Bearer opaque.secret") == f"Authorization: Bearer {REDACTED}"
    assert redact("GET /api/tasks/?page=2 200") == "GET /api/tasks/?page=2 200"


def test_every_handler_of_the_logging_config_redacts():
    handlers = [
        h for h in logging.getLogger().handlers if isinstance(h.formatter, RedactingFormatter)
    ]
    assert handlers, "the root logger's console handler is not settings.LOGGING's"
    record = logging.LogRecord(
        "django.request",
        logging.WARNING,
        __file__,
        1,
        "Seen %s",
        (f"/ws?token={CANARY_CLAIMS}",),
        None,
    )
    for handler in handlers:
        assert CANARY_CLAIMS not in handler.format(record)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_canary_token_appears_in_no_log_of_the_web_process_or_the_worker(
    alice, celery_worker_process, clean_connection_registry
):
    web, base_url = testing.start_daphne()
    canary = access_token_for(alice)  # a real, valid token: the one that must not leak
    forged = canary[:-4] + ("AAAA" if not canary.endswith("AAAA") else "BBBB")
    try:
        bearer = {"Authorization": f"Bearer {canary}"}
        with httpx.Client(base_url=base_url, timeout=20) as http:
            created = http.post(
                f"/api/tasks/?token={canary}",
                json={"title": "canary", "kind": "echo", "params": {"a": 1}},
                headers=bearer,
            )
            assert created.status_code == 201, created.text
            assert http.get(f"/api/tasks/?token={canary}", headers=bearer).status_code == 200
            assert http.get(f"/api/nowhere/?token={canary}").status_code == 404
            refused = http.get("/api/tasks/", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401

        async def sockets() -> None:
            ws_base = base_url.replace("http://", "ws://")
            async with ws_connect(f"{ws_base}/ws?token={canary}&last_event_id=0") as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"
            async with ws_connect(f"{ws_base}/ws", subprotocols=[canary]) as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"
            async with ws_connect(f"{ws_base}/ws?token={forged}") as ws:
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)

        asyncio.run(sockets())
        wait_until_finished(Task.objects.get(pk=created.json()["id"]))
        # The access log wrote the requests (with the token redacted), so not finding the
        # canary below means it was hidden, not that nothing was logged.
        testing.wait_until(
            lambda: "WSDISCONNECT /ws" in web.output, message="the sockets in the access log"
        )
    finally:
        web.stop()
    assert f"/api/tasks/?token={REDACTED}" in web.output
    for process in (web, celery_worker_process):
        for secret in (canary, forged, canary.split(".")[2]):
            assert secret not in process.output, f"{process.name} logged a token"
