"""Does the lean socket tier prototype (bench/proto_socket_tier.py) speak TaskHub's
protocol? A functional check, not a benchmark: it starts the prototype on a free port,
drives it with one user's sockets through the project's real publish path, and prints
PASS/FAIL per behaviour (what docs/protocol.md and notifications/consumers.py promise):
the welcome's fields, live pushes in order, a gap filled from the log, ping/pong,
`resume`, `?last_event_id=` replay then live with none twice, an id from the future,
bad frames, refused tokens (garbage, refresh, expired, none: 4401), the token as a
subprotocol, a foreign Origin (4403), another path (404), the per-user cap (4429) and
the registry entry's life.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/taskhub_bench \\
    REDIS_URL=redis://127.0.0.1:6379/13 .venv/bin/python -m bench.proto_check

It writes users and events, so it only runs on a database whose name ends in `_bench`
(the one a bench run leaves behind, migrated). Exit code 0 when every check passed.
Every wait is bounded (5 s a frame, 30 s for the server to start).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
FRAME_TIMEOUT = 5.0


def main() -> int:
    db_name = urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/")
    if not db_name.endswith("_bench") or not os.environ.get("REDIS_URL"):
        print(
            "bench.proto_check: DATABASE_URL must name a migrated *_bench database (it writes "
            "users and events) and REDIS_URL must be set",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("SECRET_KEY", f"proto-check-{uuid.uuid4().hex}{uuid.uuid4().hex}")
    os.environ.setdefault("DEBUG", "0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    import django

    django.setup()
    from devserver.testing import ManagedProcess, free_port

    port = free_port()
    server = ManagedProcess(
        "proto_ws",
        [sys.executable, "-m", "bench.proto_socket_tier", "--port", str(port)],
        dict(os.environ),
    )
    try:
        server.wait_until_up(
            lambda: server.wait_for_output("proto_socket_tier listening", timeout=30)
        )
        try:
            ok = asyncio.run(checks(port))
        except Exception as exc:  # a frame that never came, a refused connect: a failure
            print(f"FAIL: the checks stopped at {type(exc).__name__}: {exc}")
            ok = False
    finally:
        server.stop(signal.SIGTERM, timeout=20)
    if not ok:
        print("\n".join(server.lines[-30:]), file=sys.stderr)
    print("ALL PASS" if ok else "SOME FAILED")
    return 0 if ok else 1


async def checks(port: int) -> bool:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework_simplejwt.tokens import AccessToken, RefreshToken
    from websockets.asyncio.client import ClientConnection, connect

    from notifications import protocol
    from notifications.selectors import user_connection_count
    from notifications.services import _INSERT_EVENT, publish

    user = await asyncio.to_thread(
        get_user_model().objects.create, username=f"proto_check_{uuid.uuid4().hex[:8]}"
    )
    token = str(AccessToken.for_user(user))
    base = f"ws://127.0.0.1:{port}"
    url = f"{base}/ws?token={token}"
    results: list[bool] = []

    def check(what: str, passed: bool, seen: Any = "") -> None:
        results.append(bool(passed))
        print(("PASS " if passed else "FAIL ") + what + ("" if passed else f": {seen}"))

    def publish_n(n: int) -> list[int]:  # the real path: row, counter, push after commit
        return [
            publish(user_id=user.pk, type=protocol.NOTIFICATION_NEW, data={"n": i}).seq
            for i in range(n)
        ]

    def write_without_push(n: int) -> list[int]:  # pushes lost: only the log has them
        seqs = []
        with connection.cursor() as cursor:
            for i in range(n):
                cursor.execute(
                    _INSERT_EVENT,  # user_id, type, data, task_id, created_at
                    [
                        user.pk,
                        protocol.NOTIFICATION_NEW,
                        json.dumps({"silent": i}),
                        None,
                        datetime.now(UTC),
                    ],
                )
                seqs.append(cursor.fetchone()[1])
        return seqs

    async def recv(ws: ClientConnection) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))

    async def ids(ws: ClientConnection, n: int) -> list[int]:
        """The ids of the next n frames, or of those that came within FRAME_TIMEOUT each."""
        got: list[int] = []
        for _ in range(n):
            try:
                got.append((await recv(ws))["id"])
            except TimeoutError:
                break
        return got

    async def close_code(ws: ClientConnection) -> int | None:
        try:
            await asyncio.wait_for(ws.wait_closed(), FRAME_TIMEOUT)
        except TimeoutError:
            return None
        return ws.close_code

    first = await asyncio.to_thread(publish_n, 5)
    async with connect(url, compression=None) as ws:
        welcome = await recv(ws)
        data = welcome.get("data", {})
        check(
            "welcome: the consumer's fields, the user, the newest id",
            welcome.get("type") == "welcome"
            and set(data)
            == {
                "user",
                "server_version",
                "protocol_version",
                "last_event_id",
                "idle_timeout",
                "server",
            }
            and data["user"] == {"id": user.pk, "username": user.username}
            and data["last_event_id"] == first[-1],
            welcome,
        )
        live = await asyncio.to_thread(publish_n, 3)
        got = await ids(ws, 3)
        check("live pushes, in order", got == live, got)
        gap = await asyncio.to_thread(write_without_push, 4)
        after = await asyncio.to_thread(publish_n, 1)
        got = await ids(ws, 5)
        check("a gap is filled from the log, in order", got == gap + after, got)
        await ws.send(json.dumps({"type": "ping", "ref": 7}))
        pong = await recv(ws)
        check("ping -> pong with the ref", pong["type"] == "pong" and pong.get("ref") == 7, pong)
        await ws.send(json.dumps({"type": "resume", "last_event_id": first[1], "ref": "r"}))
        want = list(range(first[1] + 1, after[0] + 1))
        got = await ids(ws, len(want))
        check("resume frame: every event after the id, in order", got == want, got)
        await ws.send("not json")
        error = await recv(ws)
        check(
            "a bad frame -> error bad_request, socket open",
            error["type"] == "error" and error["data"]["code"] == "bad_request",
            error,
        )
    async with connect(f"{url}&last_event_id={first[2]}", compression=None) as ws:
        await recv(ws)
        more = await asyncio.to_thread(publish_n, 3)
        want = list(range(first[2] + 1, more[-1] + 1))
        got = await ids(ws, len(want))
        check("?last_event_id=: replay then live, in order, none twice", got == want, got)
    async with connect(f"{url}&last_event_id=999999999", compression=None) as ws:
        await recv(ws)
        nxt = await asyncio.to_thread(publish_n, 1)
        got = await ids(ws, 1)
        check("an id from the future means from the newest", got == nxt, got)

    expired = AccessToken.for_user(user)
    expired.set_exp(lifetime=-timedelta(seconds=1))
    refused = {
        "a garbage token": f"{base}/ws?token=abc",
        "a refresh token": f"{base}/ws?token={RefreshToken.for_user(user)}",
        "an expired token": f"{base}/ws?token={expired}",
        "no token": f"{base}/ws",
    }
    for label, refused_url in refused.items():
        async with connect(refused_url, compression=None) as ws:
            error = await recv(ws)
            code = await close_code(ws)
            check(
                f"{label} -> error unauthenticated, close 4401",
                error["data"]["code"] == "unauthenticated" and code == 4401,
                (error, code),
            )
    async with connect(f"{base}/ws", subprotocols=[token], compression=None) as ws:  # type: ignore[list-item]
        welcome = await recv(ws)
        check(
            "the token as a subprotocol, selected",
            welcome["type"] == "welcome" and ws.subprotocol == token,
            ws.subprotocol,
        )
    async with connect(url, origin="http://evil.example", compression=None) as ws:  # type: ignore[arg-type]
        code = await close_code(ws)
        check("a foreign Origin -> close 4403", code == 4403, code)
    try:
        async with connect(f"{base}/elsewhere?token={token}", compression=None):
            check("another path is refused", False, "accepted")
    except Exception as exc:
        check("another path is refused (404)", "404" in str(exc), exc)

    sockets = await asyncio.gather(*(connect(url, compression=None) for _ in range(25)))
    first_frames = await asyncio.gather(*(recv(ws) for ws in sockets))
    kinds = [f["type"] if f["type"] == "welcome" else f["data"]["code"] for f in first_frames]
    counted = await asyncio.to_thread(user_connection_count, user_id=user.pk)
    check(
        "the per-user cap: 20 welcomed, 5 refused (too_many_connections); 20 registered",
        kinds.count("welcome") == 20 and kinds.count("too_many_connections") == 5 and counted == 20,
        (kinds, counted),
    )
    await asyncio.gather(*(ws.close() for ws in sockets))
    for _ in range(50):  # the release is batched: give it up to 5 s
        counted = await asyncio.to_thread(user_connection_count, user_id=user.pk)
        if counted == 0:
            break
        await asyncio.sleep(0.1)
    check("registry entries are gone once the sockets closed", counted == 0, counted)
    return all(results)


if __name__ == "__main__":
    sys.exit(main())
