"""No token in any log (issue 13, S3; OWASP's WebSocket cheat sheet): a canary JWT used
over HTTP (`?token=`, `Authorization: Bearer`, a Host header that Django logs as invalid)
and the WebSocket (`/ws?token=`, and as a subprotocol), and handed to a task that logs it
(its own Celery task logger, the `tasks` logger, print, stderr), appears nowhere in what a
real web process and a real Celery worker write under DEBUG=1, access log included
(taskhub/redaction.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from conftest import access_token_for, wait_until_finished
from devserver import nginx, testing
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


def every_handler() -> dict[str, list[logging.Handler]]:
    """Each logger's handlers that write somewhere (pytest's own capture handlers and
    NullHandlers aside)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return {
        logger.name: [
            h
            for h in logger.handlers
            if not type(h).__module__.startswith("_pytest")
            and not isinstance(h, logging.NullHandler)
        ]
        for logger in loggers
        if isinstance(logger, logging.Logger)
    }


def test_no_logger_has_a_handler_that_does_not_redact():
    # Django's DEFAULT_LOGGING gave `django` a console handler of its own (printing under
    # DEBUG), and `django.server` another: settings.LOGGING must have taken them away.
    unredacted = {
        name: handlers
        for name, handlers in every_handler().items()
        if any(not isinstance(h.formatter, RedactingFormatter) for h in handlers)
    }
    assert unredacted == {}
    assert every_handler()["django"] == []
    assert logging.getLogger("django").propagate


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


# DEBUG=1 (Django's own console handler printed under it) and a processor that logs its
# params, both processes alike (the web process checks a create's kind).
CANARY_ENV = {
    "DEBUG": "1",
    "TASK_PROCESSORS": "canary_log=taskhub.tests.canary_processors.logs_its_params",
}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_canary_token_appears_in_no_log_of_the_web_process_or_the_worker(
    alice, purge_broker, clean_connection_registry
):
    worker = testing.start_worker(extra_env=CANARY_ENV)
    try:
        web, base_url = testing.start_daphne(extra_env=CANARY_ENV)
    except BaseException:
        worker.stop()
        raise
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
            logged = http.post(
                "/api/tasks/",
                json={"title": "logs", "kind": "canary_log", "params": {"token": canary}},
                headers=bearer,
            )
            assert logged.status_code == 201, logged.text
            assert http.get(f"/api/tasks/?token={canary}", headers=bearer).status_code == 200
            assert http.get(f"/api/nowhere/?token={canary}").status_code == 404
            refused = http.get("/api/tasks/", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401
            # Logged by django.security.DisallowedHost with the host as sent (the underscore
            # makes it no domain name at all, so Django adds no lowercased copy of it).
            assert http.get("/api/tasks/", headers={"Host": f"{canary}_"}).status_code == 400

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
        wait_until_finished(Task.objects.get(pk=logged.json()["id"]))
        # The access log wrote the requests (with the token redacted), so not finding the
        # canary below means it was hidden, not that nothing was logged.
        testing.wait_until(
            lambda: "WSDISCONNECT /ws" in web.output, message="the sockets in the access log"
        )
    finally:
        web.stop()
        worker.stop()
    assert f"/api/tasks/?token={REDACTED}" in web.output
    assert "Invalid HTTP_HOST header: '[redacted]'" in web.output
    # Every way the task wrote its params came out, once each, redacted.
    for way in ("task logger", "tasks logger", "print", "stderr"):
        assert worker.output.count(f"canary {way}: {{'token': '{REDACTED}'}}") == 1, way
    for process in (web, worker):
        for secret in (canary, forged, canary.split(".")[2]):
            assert secret not in process.output, f"{process.name} logged a token"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_docker_compose_s_nginx_logs_no_query_string(alice, tmp_path, clean_connection_registry):
    binary = nginx.find_binary()
    if binary is None:
        pytest.skip(nginx.INSTALL_HINT)
    # compose.conf's own log_format and access_log lines, in the one-machine config the
    # launcher writes (compose.conf names hosts only docker resolves), logging to tmp_path.
    compose = (Path(settings.BASE_DIR) / "deploy" / "nginx" / "compose.conf").read_text()
    found = re.search(r"^log_format .*?;\n^access_log [^;]*;", compose, re.M | re.S)
    assert found, "compose.conf leaves nginx's default access log, which writes $request"
    log = tmp_path / "access.log"
    directives = re.sub(r"^access_log \S+", f"access_log {log}", found.group(0), flags=re.M)
    web, base_url = testing.start_daphne()
    port = testing.free_port()
    config = nginx.write_config(
        listen_host="127.0.0.1",
        listen_port=port,
        backends=[int(base_url.rsplit(":", 1)[1])],
        data_dir=tmp_path,
    )
    text = config.read_text()
    assert "    access_log off;\n" in text
    config.write_text(text.replace("    access_log off;\n", directives + "\n"))
    proxy = testing.ManagedProcess("nginx", nginx.command(binary, config), testing.process_env())
    canary = access_token_for(alice)
    try:
        proxy_url = f"http://127.0.0.1:{port}"
        testing.wait_until(lambda: _answers(f"{proxy_url}/healthz"), message="nginx")
        with httpx.Client(base_url=proxy_url, timeout=20) as http:
            assert http.get(f"/api/tasks/?token={canary}", headers={
                "Authorization": f"Bearer {canary}"}).status_code == 200  # fmt: skip

        async def socket() -> None:
            async with ws_connect(f"ws://127.0.0.1:{port}/ws?token={canary}") as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"

        asyncio.run(socket())
        testing.wait_until(lambda: log.exists() and "GET /ws " in log.read_text(), message="log")
    finally:
        proxy.stop()
        web.stop()
    written = log.read_text()
    assert "GET /api/tasks/ HTTP/1.1" in written
    assert canary.split(".")[2] not in written and "token" not in written


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
