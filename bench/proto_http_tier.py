"""An asyncio HTTP tier for TaskHub's two hot endpoints, `POST /api/tasks/` and
`GET /search`: the design that would pass issue 10's REST target, as a prototype
measured in the same harness as the product and the minimal-Django reference
(docs/benchmarks.md, "An asyncio HTTP tier measured").

**A measurement artefact, not product code.** The lean HTTP path (bench/proto_http.py)
moved the requests' work onto Daphne's loop and still paid Daphne's, Twisted's and
Django's handler's cost per request, 3-4 ms of CPU before any view runs on this machine.
This process serves the same work, `proto_http.create_answer` and
`proto_http.search_answer` (the product's modules for auth, rate limit, validation, SQL
and push), from a plain ASGI callable on uvicorn with httptools' C parser: no Django
request, no middleware, no URL resolver, no per-request thread. It is the shape the
sockets took in bench/proto_socket_tier.py; a product version would route these two
paths to such a process (nginx, by path) and leave the rest of the API on Django.

What it leaves out beyond proto_http's list, all of it what Django's middlewares and DRF
do for every request (taskhub/settings.py, MIDDLEWARE): Prometheus' per-view metrics,
the security headers (SecurityMiddleware, X-Frame-Options) and X-TaskHub-Server, the
session, CSRF, auth and messages middlewares (a bearer-token API request uses none of
them), DatabaseUnavailableMiddleware's 503 with Retry-After (here a 500), DRF's content
negotiation (its 415 for a body that is not JSON; DRF also writes more compact JSON, so
the bodies differ in whitespace), and HTTP keep-alive limits other than uvicorn's
defaults. It does check the Host header against ALLOWED_HOSTS and the body against
DATA_UPLOAD_MAX_MEMORY_SIZE (413), as CommonMiddleware and taskhub/body_limit.py do.

Run by the harness: `python -m bench.proto_http_tier --port N` in the stack's
environment (DATABASE_URL, REDIS_URL, SECRET_KEY, DJANGO_SETTINGS_MODULE).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")

import django

django.setup()

import uvicorn  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http import QueryDict  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from bench import proto_http  # noqa: E402
from bench.loadgen import raise_open_file_limit  # noqa: E402

logger = logging.getLogger("bench.proto_http_tier")


async def _read_body(receive: Any) -> bytes | None:
    """The request's body, or None when it is over MAX_REQUEST_BYTES (the product's
    limit, taskhub/body_limit.py)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send: Any, answer: proto_http.Answer) -> None:
    content = answer.content()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in answer.headers.items()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _answer(scope: dict[str, Any], receive: Any) -> proto_http.Answer:
    headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
    host = headers.get("host", b"").decode("latin-1")
    if not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        return proto_http.error_answer(400, "Bad Request: the Host header is not allowed.")
    authorization = headers.get("authorization", b"").decode("latin-1")
    path, method = scope["path"], scope["method"]
    if path == "/api/tasks/":
        if method != "POST":
            return proto_http.error_answer(405, f'Method "{method}" not allowed.')
        body = await _read_body(receive)
        if body is None:
            return proto_http.error_answer(413, "Request body too large.")
        return await proto_http.create_answer(
            authorization=authorization,
            idempotency_key="idempotency-key" in headers,
            body=body,
        )
    if path == "/search":
        if method != "GET":
            return proto_http.error_answer(405, f'Method "{method}" not allowed.')
        query_string = scope["query_string"].decode("latin-1")
        url = f"{scope['scheme']}://{host}{path}" + (f"?{query_string}" if query_string else "")
        return await proto_http.search_answer(
            authorization=authorization, query=QueryDict(query_string), url=url
        )
    return proto_http.error_answer(404, "Not found.")


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI callable: the two paths, every other path a JSON 404, any failure a JSON
    500 (logged) that leaves the process serving the next request."""
    if scope["type"] != "http":
        return
    try:
        answer = await _answer(scope, receive)
    except Exception:
        logger.exception("%s %s failed", scope["method"], scope["path"])
        answer = proto_http.error_answer(500, "The server could not handle this.")
    await _send(send, answer)


async def serve_forever(port: int) -> None:
    raise_open_file_limit()
    config = uvicorn.Config(
        application,
        host="127.0.0.1",
        port=port,
        loop="asyncio",  # as Daphne's and the socket tier's loops: no uvloop
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())  # uvicorn stops on SIGTERM / SIGINT
    while not server.started:
        if serving.done():
            await serving  # raises what stopped it (a taken port, say)
            return
        await asyncio.sleep(0.05)
    # What start-up made lives as long as the process: out of the collector's passes, as
    # taskhub/asgi.py does for Daphne.
    gc.collect()
    gc.freeze()
    print(f"proto_http_tier listening on 127.0.0.1:{port}", flush=True)
    await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve_forever(parser.parse_args().port))
