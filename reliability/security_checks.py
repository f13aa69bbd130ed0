"""S2, S3, S4 and S7 of issue 13 (docs/reliability.md, docs/security.md), measured against
real processes (devserver/testing.py; S7's full form starts `make run` itself).

- S2: refused handshakes and their close codes; a deactivated (by the service and by the
  admin's form) or deleted user's open sockets, and a logged-out session's, timed from
  the commit to each socket's close, with a chat post sent in that window.
- S3: a canary JWT over REST, the WebSocket, gRPC metadata and a task the worker runs;
  then every process's output is searched for it.
- S7: tokens forged with the keys the repository once held, on REST, the WebSocket and
  gRPC; the development key made once and kept across a restart; docker-compose and a
  production start without a key; what the processes listen on.
- S4: taskhub/tests/test_schema_fuzz.py at SCHEMATHESIS_EXAMPLES examples per operation,
  in a pytest of its own.

Correctness (a wrong code, a post stored, a token in a log, a forged token accepted) goes
in `failures`; times are reported, and a time over its target is a miss, not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import psutil
import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.db.models.signals import post_delete, post_save
from django.test import Client
from rest_framework_simplejwt.tokens import AccessToken
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chat.models import ChatRoom, Message
from devserver import testing
from reliability.scenarios import Result, _percentile, make_user, token_for
from taskhub import accounts, secret_key
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc

BASE_DIR = Path(settings.BASE_DIR)
WAIT = 10.0  # a bound on one wait for a frame or a close
PASSWORD = "s2-pass-" + secrets.token_hex(8)
# What settings.py fell back to before 1d1a519, and what docker-compose.yml shipped
# (`git log -p -S insecure-development-key -- taskhub/settings.py`): both public.
OLD_PUBLIC_KEY = "insecure-development-key-do-not-use-in-production"
OLD_COMPOSE_KEY = "change-me-in-production-0123456789abcdefghijklmnopqrstuvwxyz"


def _ws_base(base_url: str) -> str:
    return base_url.replace("http://", "ws://")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _spread(samples: list[float]) -> str:
    if not samples:
        return "none"
    return f"p50 {_ms(_percentile(samples, 0.5))}, max {_ms(max(samples))} ({len(samples)} sockets)"


async def _outcome(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
) -> Any:
    """What a handshake ends in: "welcome", the close code the server sent, or what
    happened instead."""
    try:
        async with ws_connect(
            url,
            additional_headers=headers or {},
            subprotocols=subprotocols,  # type: ignore[arg-type]
            open_timeout=WAIT,
        ) as ws:
            try:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                    if frame.get("type") == "welcome":
                        return "welcome"
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else "no close frame"
            except TimeoutError:
                return "open, no welcome"
    except InvalidStatus as error:
        return f"handshake {error.response.status_code}"
    except (OSError, TimeoutError) as error:
        return f"{type(error).__name__}"


async def _open(url: str, headers: dict[str, str] | None = None) -> Any:
    """An open socket past its welcome."""
    ws = await ws_connect(url, additional_headers=headers or {}, open_timeout=WAIT)
    frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert frame["type"] == "welcome", frame
    return ws


async def _until_closed(ws: Any) -> tuple[Any, float, list[dict[str, Any]]]:
    """Read until the server closes: (code, when, the frames before it)."""
    frames: list[dict[str, Any]] = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT)))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else "no close frame"), time.perf_counter(), frames
    except TimeoutError:
        return "still open", time.perf_counter(), frames


async def _drain(ws: Any, seconds: float = 0.3) -> None:
    with contextlib.suppress(TimeoutError):
        while True:
            await asyncio.wait_for(ws.recv(), seconds)


async def _sync(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function` in a thread (the ORM is sync only), its database connection closed after:
    the run's database is dropped at the end, and a thread's connection would hold it."""

    def call() -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


def _expired_token(user: Any) -> str:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=-timedelta(minutes=1))
    return str(token)


def _forged(user: Any, key: str) -> str:
    """A well-formed access token for `user` with this server's claims, signed with `key`
    (taskhub/tests/test_security.py's forged_access_token)."""
    return jwt.encode(dict(AccessToken.for_user(user).payload), key, algorithm="HS256")


class Page:
    """A browser's session over HTTP: the page's sign-in and sign-out forms, CSRF included."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)

    def sign_in(self, username: str, password: str) -> None:
        form = self.http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, form.text[:500]
        answer = self.http.post(
            "/accounts/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token[1]},
        )
        assert answer.status_code == 302 and "sessionid" in self.http.cookies, answer.text[:500]

    @property
    def socket_headers(self) -> dict[str, str]:
        return {"Cookie": f"sessionid={self.http.cookies['sessionid']}", "Origin": self.base_url}

    def sign_out(self) -> int:
        """The page's "Sign out" button: POST /accounts/logout/ with the CSRF token."""
        answer = self.http.post(
            "/accounts/logout/", headers={"X-CSRFToken": self.http.cookies["csrftoken"]}
        )
        return answer.status_code


# --- S2: credentials refused and taken away -----------------------------------------------


def s2_revocation(*, repeat: int, sockets: int, rounds: int, admin_sockets: int) -> Result:
    """One Daphne with the sweep off (WS_CATCHUP_INTERVAL=0: only the push can close a
    socket). Each refused handshake kind `repeat` times; `rounds` users with `sockets`
    sockets each deactivated by accounts.user_deactivate, one by the admin's change form
    (`admin_sockets`), one deleted; a page signed in over HTTP that signs out."""
    web, base_url = testing.start_daphne(extra_env={"WS_CATCHUP_INTERVAL": "0"})
    user_model = get_user_model()
    post_save.connect(_note_commit, sender=user_model, weak=False)
    post_delete.connect(_note_commit, sender=user_model, weak=False)
    try:
        figures = asyncio.run(
            _s2(base_url, repeat=repeat, sockets=sockets, rounds=rounds, admin=admin_sockets)
        )
    finally:
        post_save.disconnect(_note_commit, sender=user_model)
        post_delete.disconnect(_note_commit, sender=user_model)
        web.stop()
        connections.close_all()
    failures, misses = figures.pop("failures"), figures.pop("misses")
    tracebacks = web.output.count("Traceback")
    if tracebacks:
        failures.append(f"{tracebacks} traceback(s) in Daphne's log")
    measured = "; ".join([*figures.pop("rows"), f"tracebacks in Daphne's log: {tracebacks}"])
    return Result("S2", measured, failures, figures, misses)


# user id -> when the transaction that saved or deleted it committed (in this process):
# where each close time counts from, whatever path made the change (the admin's view
# renders and validates its form first).
_committed_at: dict[Any, float] = {}


def _note_commit(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if created:
        return
    pk = instance.pk
    # Runs after accounts' own on_commit (its receiver was connected first): the push has
    # been published by then, so the times below are, if anything, short by that much.
    transaction.on_commit(lambda: _committed_at.__setitem__(pk, time.perf_counter()))


HANDSHAKE_EXPECTED = {
    "foreign Origin, valid token": 4403,
    "foreign Origin, valid session cookie": 4403,
    "no Origin, no credential": 4401,
    "no token (page's Origin)": 4401,
    "expired token": 4401,
    "token with a bad signature": 4401,
    "token of a deleted user": 4401,
    "token of a deactivated user": 4401,
    "cookie of a logged-out session": 4401,
    "expired token as subprotocol": 4401,
}


@dataclass
class _Window:
    """What the deactivation rounds saw between the commit and each socket's close."""

    closes: list[float] = field(default_factory=list)
    close_codes: Counter[Any] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    rest_refused_after: list[float] = field(default_factory=list)
    rest_accepted: int = 0
    stored: int = 0
    reconnects: Counter[Any] = field(default_factory=Counter)


async def _deactivation_round(base_url: str, sockets: int, window: _Window) -> None:
    """A user with `sockets` sockets in the general room, deactivated by the service; each
    socket posts to the room right after the commit and waits for its close, while the
    user's token creates tasks over REST until refused."""
    tag = f"s2-{secrets.token_hex(4)}"
    user = await _sync(make_user, "s2-deact")
    token = await _sync(token_for, user)
    url = f"{_ws_base(base_url)}/ws?token={token}"
    open_sockets = [await _open(url, {"Origin": base_url}) for _ in range(sockets)]
    for ws in open_sockets:
        await ws.send(json.dumps({"type": "subscribe.chat", "room": "general", "ref": "s"}))
    for ws in open_sockets:
        await _drain(ws)
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=bearer) as rest:
        warm = await rest.get("/api/tasks/")  # the web process caches the user now
        assert warm.status_code == 200, warm.text
        await _sync(accounts.user_deactivate, user=user)
        committed = _committed_at[user.pk]

        async def post_then_wait(index: int, ws: Any) -> None:
            post = {"type": "chat.message.post", "room": "general", "ref": f"p{index}"}
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({**post, "text": f"{tag} after {index}"}))
            code, at, frames = await _until_closed(ws)
            window.close_codes[code] += 1
            window.closes.append(at - committed)
            reply = [f for f in frames if f.get("ref") == f"p{index}"]
            if not reply:
                window.answers["no answer (closed first)"] += 1
            else:
                error = (reply[0].get("data") or {}).get("code")
                window.answers[f"{reply[0]['type']} {error}" if error else reply[0]["type"]] += 1

        async def rest_until_refused() -> None:
            create = {"title": "after", "kind": "echo", "params": {}}
            while time.perf_counter() - committed < 30:
                answer = await rest.post("/api/tasks/", json=create)
                if answer.status_code == 401:
                    window.rest_refused_after.append(time.perf_counter() - committed)
                    return
                window.rest_accepted += answer.status_code == 201
                await asyncio.sleep(0.1)
            window.rest_refused_after.append(float("inf"))

        await asyncio.gather(
            *(post_then_wait(i, ws) for i, ws in enumerate(open_sockets)), rest_until_refused()
        )
    window.stored += await _sync(Message.objects.filter(text__startswith=f"{tag} after").count)
    for ws in open_sockets:
        await ws.close()
    # A script would reconnect with the same token: this process closed the user's sockets
    # and forgot its cached lookup, so the handshake reads the row again.
    window.reconnects[await _outcome(url, headers={"Origin": base_url})] += 1


async def _new_socket_after_last_closed(base_url: str) -> Any:
    """A user connects once and closes (the web process now caches them), is deactivated
    (no socket of theirs to push to), and connects again at once: what happens."""
    user = await _sync(make_user, "s2-cached")
    url = f"{_ws_base(base_url)}/ws?token={await _sync(token_for, user)}"
    ws = await _open(url, {"Origin": base_url})
    await ws.close()
    await _sync(accounts.user_deactivate, user=user)
    return await _outcome(url, headers={"Origin": base_url})


async def _s2(base_url: str, *, repeat: int, sockets: int, rounds: int, admin: int) -> dict:
    failures: list[str] = []
    misses: list[str] = []
    rows: list[str] = []
    ws_base = _ws_base(base_url)
    origin = {"Origin": base_url}
    foreign = {"Origin": "https://evil.example"}
    await _sync(ChatRoom.objects.get_or_create, slug="general",
                            defaults={"name": "General", "is_public": True})  # fmt: skip

    # 1. Handshakes that must be refused, and the code each got.
    def credentials() -> dict[str, Any]:
        live = make_user("s2-live")
        deleted, deactivated = make_user("s2-deleted"), make_user("s2-deactivated")
        deleted_token = token_for(deleted)
        deleted.delete()
        deactivated_token = token_for(deactivated)
        accounts.user_deactivate(user=deactivated)
        user = make_user("s2-page")
        user.set_password(PASSWORD)
        user.save()
        page, gone = Page(base_url), Page(base_url)
        page.sign_in(user.username, PASSWORD)
        gone.sign_in(user.username, PASSWORD)
        gone_cookie = gone.socket_headers["Cookie"]  # the client forgets it at sign-out
        assert gone.sign_out() == 302
        good = token_for(live)
        return {
            "live": good,
            "expired": _expired_token(live),
            "bad signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
            "deleted": deleted_token,
            "deactivated": deactivated_token,
            "cookie": page.socket_headers["Cookie"],
            "gone cookie": gone_cookie,
        }

    tokens = await _sync(credentials)
    kinds = {
        "foreign Origin, valid token": dict(url=f"{ws_base}/ws?token={tokens['live']}",
                                            headers=foreign),
        "foreign Origin, valid session cookie": dict(
            url=f"{ws_base}/ws", headers={**foreign, "Cookie": tokens["cookie"]}),
        "no Origin, no credential": dict(url=f"{ws_base}/ws"),
        "no token (page's Origin)": dict(url=f"{ws_base}/ws", headers=origin),
        "expired token": dict(url=f"{ws_base}/ws?token={tokens['expired']}", headers=origin),
        "token with a bad signature": dict(url=f"{ws_base}/ws?token={tokens['bad signature']}",
                                           headers=origin),
        "token of a deleted user": dict(url=f"{ws_base}/ws?token={tokens['deleted']}",
                                        headers=origin),
        "token of a deactivated user": dict(url=f"{ws_base}/ws?token={tokens['deactivated']}",
                                            headers=origin),
        "cookie of a logged-out session": dict(
            url=f"{ws_base}/ws", headers={**origin, "Cookie": tokens["gone cookie"]}),
        "expired token as subprotocol": dict(url=f"{ws_base}/ws", headers=origin,
                                             subprotocols=[tokens["expired"]]),
    }  # fmt: skip
    codes: Counter[Any] = Counter()
    wrong: Counter[str] = Counter()
    for _ in range(repeat):
        for name, options in kinds.items():
            got = await _outcome(**options)
            codes[got] += 1
            if got != HANDSHAKE_EXPECTED[name]:
                wrong[f"{name}: {got}"] += 1
    # The control: the same live token with no Origin (scripts send none) is let in, so a
    # refusal above is the credential's or the origin's, not the client's.
    control = await _outcome(f"{ws_base}/ws?token={tokens['live']}")
    total = repeat * len(kinds)
    by_code = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=str))
    rows.append(
        f"refused handshakes: {len(kinds)} kinds x {repeat} = {total}, closed {by_code} "
        f"(4403 for both foreign-Origin kinds, 4401 for the rest), {sum(wrong.values())} "
        f"wrong; a live token without Origin: {control}"
    )
    if wrong:
        failures.append(f"handshakes with the wrong outcome: {dict(wrong)}")
    if control != "welcome":
        failures.append(f"the live token was refused too: {control}")

    # 2. Deactivated by the service (accounts.user_deactivate), with a chat post from every
    # socket sent as soon as the deactivation committed.
    window = _Window()
    for _ in range(rounds):
        await _deactivation_round(base_url, sockets, window)
    closes, close_codes, answers = window.closes, window.close_codes, window.answers
    rest_window, rest_accepted = window.rest_refused_after, window.rest_accepted
    if window.stored:
        failures.append(f"{window.stored} chat posts stored after the deactivation")
    posted = sum(n for kind, n in answers.items() if kind.startswith("chat.message"))
    rows.append(
        f"deactivated by accounts.user_deactivate ({rounds} users x {sockets} sockets, a chat "
        f"post from each right after the commit): closed {dict(close_codes)}, "
        f"{_spread(closes)} after the commit; the posts: {dict(answers)}, 0 stored"
        if not posted
        else f"deactivation: {posted} posts answered as posted"
    )
    if any(code != 4401 for code in close_codes):
        failures.append(f"deactivated sockets closed {dict(close_codes)}, expected 4401")
    if posted:
        failures.append(f"{posted} chat posts answered as posted after the deactivation")
    if closes and max(closes) > 1:
        misses.append(f"a deactivated user's socket closed {max(closes):.2f} s after (target 1 s)")
    rows.append(
        f"REST in that window (the web process had the user cached): {rest_accepted} creates "
        f"accepted, refused 401 from {max(rest_window):.1f} s after the commit (at most "
        f"REST_AUTH_CACHE_SECONDS, {settings.TASKHUB_REST_AUTH_CACHE_SECONDS:g} s, documented)"
    )
    if max(rest_window) > settings.TASKHUB_REST_AUTH_CACHE_SECONDS + 2:
        failures.append(f"REST accepted a deactivated user's token for {max(rest_window):.1f} s")
    stale = await _new_socket_after_last_closed(base_url)
    rows.append(
        f"a reconnect with the token after the close: {dict(window.reconnects)}; a new "
        "socket of a user deactivated after their last socket had closed, on a process that "
        f"still caches them (WS_AUTH_CACHE_SECONDS, {settings.TASKHUB_WS_AUTH_CACHE_SECONDS:g} "
        f"s, documented): {stale}"
    )
    if set(window.reconnects) != {4401}:
        failures.append(f"a deactivated user reconnected: {dict(window.reconnects)}")

    # 3. Deactivated by the admin's change form ("active" unticked), and deleted.
    def admin_deactivate(user: Any) -> None:
        from notifications.tests.test_revocation import admin_save

        operator = get_user_model().objects.create_superuser(
            f"s2-op-{secrets.token_hex(4)}", "op@example.com", secrets.token_hex(16)
        )
        client = Client()
        client.force_login(operator)
        admin_save(client, user, is_active=False)

    for path, act in (("admin form", admin_deactivate), ("deleted", lambda user: user.delete())):
        user = await _sync(make_user, "s2-" + path.split()[0])
        url = f"{ws_base}/ws?token={await _sync(token_for, user)}"
        open_sockets = [await _open(url, origin) for _ in range(admin)]
        pk = user.pk
        await _sync(act, user)
        results = await asyncio.gather(*(_until_closed(ws) for ws in open_sockets))
        got = Counter(code for code, _, _ in results)
        times = [at - _committed_at[pk] for _, at, _ in results]
        rows.append(f"{path}: closed {dict(got)}, {_spread(times)} after the commit")
        if set(got) != {4401}:
            failures.append(f"{path}: sockets closed {dict(got)}, expected 4401")
        if times and max(times) > 1:
            misses.append(f"{path}: a socket closed {max(times):.2f} s after (target 1 s)")

    # 4. The page signs out (POST /accounts/logout/, as its "Sign out" button): the sockets
    # its session opened close; a token socket of the same user is another credential.
    def signed_in_page() -> tuple[Page, str]:
        user = make_user("s2-logout")
        user.set_password(PASSWORD)
        user.save()
        page = Page(base_url)
        page.sign_in(user.username, PASSWORD)
        return page, token_for(user)

    page, token = await _sync(signed_in_page)
    session_sockets = [await _open(f"{ws_base}/ws", page.socket_headers) for _ in range(admin)]
    token_socket = await _open(f"{ws_base}/ws?token={token}", origin)
    started = time.perf_counter()
    status = await _sync(page.sign_out)
    answered = time.perf_counter()
    results = await asyncio.gather(*(_until_closed(ws) for ws in session_sockets))
    got = Counter(code for code, _, _ in results)
    times = [at - started for _, at, _ in results]
    await token_socket.send(json.dumps({"type": "ping", "ref": "still"}))
    try:
        pong = json.loads(await asyncio.wait_for(token_socket.recv(), WAIT))["type"]
    except (ConnectionClosed, TimeoutError) as error:
        pong = type(error).__name__
    await token_socket.close()
    page.http.close()
    rows.append(
        f"sign-out (POST /accounts/logout/ over HTTP: {status}, {_ms(answered - started)}): "
        f"the session's sockets closed {dict(got)}, {_spread(times)} after it was sent; the "
        f"same user's token socket answered the next ping with {pong}"
    )
    if status != 302 or set(got) != {4401}:
        failures.append(f"sign-out: {status}, sockets closed {dict(got)}, expected 302 and 4401")
    if pong != "pong":
        failures.append(f"sign-out also ended the token socket: {pong}")
    if times and max(times) > 1:
        misses.append(f"sign-out: a socket closed {max(times):.2f} s after (target 1 s)")
    return {
        "rows": rows,
        "failures": failures,
        "misses": misses,
        "handshake_codes": {str(k): v for k, v in codes.items()},
        "deactivation_closes": closes,
    }


# --- S3: a canary token in no log ---------------------------------------------------------

CANARY_ENV = {
    "DEBUG": "1",
    "TASK_PROCESSORS": "canary_log=taskhub.tests.canary_processors.logs_its_params",
}


def start_grpc(
    extra_env: dict[str, str] | None = None,
    *,
    host: str | None = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> tuple[testing.ManagedProcess, str]:
    """`manage.py grpcserver` on a port the OS picks (--host unless None: then it binds
    what GRPC_HOST/HOST say, or their default)."""
    args = [sys.executable, "manage.py", "grpcserver", "--port", "0", "--grace", "5"]
    if host:
        args += ["--host", host]
    server = testing.ManagedProcess(
        "grpcserver", args, env or testing.process_env(**(extra_env or {}))
    )
    server.wait_for_output("listening on", timeout=60)
    found = re.search(r"listening on (\S+):(\d+)", server.output)
    assert found, server.output
    return server, f"127.0.0.1:{found[2]}"


def s3_canary(*, rounds: int) -> Result:
    """A real access token (the canary) used `rounds` times over every surface that takes
    one, with a forged copy beside it; a task logs it every way a processor can. Then
    every line each process wrote is searched for the token and its signature."""
    worker = testing.start_worker(extra_env=CANARY_ENV)
    web = grpc_server = None
    try:
        web, base_url = testing.start_daphne(extra_env=CANARY_ENV)
        grpc_server, grpc_address = start_grpc(CANARY_ENV)
        user = make_user("s3")
        canary = token_for(user)
        forged = canary[:-4] + ("AAAA" if not canary.endswith("AAAA") else "BBBB")
        requests: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        task_ids: list[str] = []
        bearer = {"Authorization": f"Bearer {canary}"}
        with httpx.Client(base_url=base_url, timeout=30) as http:
            for _ in range(rounds):
                calls = [
                    ("POST", f"/api/tasks/?token={canary}", bearer,
                     {"title": "canary", "kind": "canary_log", "params": {"token": canary}}),
                    ("GET", f"/api/tasks/?token={canary}", bearer, None),
                    ("GET", "/api/tasks/", bearer, None),
                    ("GET", f"/api/tasks/?token={canary}", {}, None),
                    ("GET", f"/api/nowhere/?token={canary}&access_token={canary}", {}, None),
                    ("GET", "/api/tasks/", {"Authorization": f"Bearer {forged}"}, None),
                    ("GET", "/api/tasks/", {"Host": f"{canary}_"}, None),
                    ("POST", "/api/auth/token/refresh/", {}, {"refresh": canary}),
                ]  # fmt: skip
                for method, path, headers, body in calls:
                    answer = http.request(method, path, headers=headers, json=body)
                    requests["REST"] += 1
                    statuses[f"REST {answer.status_code}"] += 1
                    if answer.status_code == 201:
                        task_ids.append(answer.json()["id"])

        async def sockets() -> None:
            ws_base = _ws_base(base_url)
            for _ in range(rounds):
                for url, protocols in (
                    (f"{ws_base}/ws?token={canary}&last_event_id=0", None),
                    (f"{ws_base}/ws", [canary]),
                    (f"{ws_base}/ws?token={forged}", None),
                    (f"{ws_base}/ws", [forged]),
                ):
                    got = await _outcome(url, headers={"Origin": base_url},
                                         subprotocols=protocols)  # fmt: skip
                    requests["WebSocket"] += 1
                    statuses[f"WS {got}"] += 1

        asyncio.run(sockets())
        with grpc.insecure_channel(grpc_address) as channel:
            stub = pb_grpc.TaskServiceStub(channel)
            params = pb.CreateTaskRequest().params
            params.update({"token": canary})
            for _ in range(rounds):
                for token in (canary, forged):
                    metadata = (("authorization", f"Bearer {token}"),)
                    for call in (
                        lambda m=metadata: stub.ListTasks(pb.ListTasksRequest(), metadata=m,
                                                          timeout=30),
                        lambda m=metadata: stub.CreateTask(
                            pb.CreateTaskRequest(title="canary", kind="canary_log",
                                                 params=params), metadata=m, timeout=30),
                    ):  # fmt: skip
                        requests["gRPC"] += 1
                        try:
                            reply = call()
                            statuses["gRPC OK"] += 1
                            if isinstance(reply, pb.Task):
                                task_ids.append(reply.id)
                        except grpc.RpcError as error:
                            statuses[f"gRPC {error.code().name}"] += 1
        from tasks.models import TERMINAL_STATUSES, Task

        testing.wait_until(
            lambda: (
                Task.objects.filter(pk__in=task_ids, status__in=TERMINAL_STATUSES).count()
                == len(task_ids)
            ),
            timeout=120,
            message="the canary tasks to finish",
        )
        testing.wait_until(lambda: "WSDISCONNECT /ws" in web.output, message="the access log")
        time.sleep(1)  # the last access-log lines
    finally:
        for process in (grpc_server, web, worker):
            if process is not None:
                process.stop()
        connections.close_all()
    secrets_ = {"token": canary, "signature": canary.split(".")[2],
                "forged signature": forged.split(".")[2]}  # fmt: skip
    found: dict[str, int] = {}
    lines: dict[str, int] = {}
    for process in (web, worker, grpc_server):
        assert process is not None
        lines[process.name] = len(process.lines)
        found[process.name] = sum(
            line.count(value) for line in process.lines for value in secrets_.values()
        )
    redacted = {p.name: p.output.count("[redacted]") for p in (web, worker, grpc_server)}
    processor_lines = worker.output.count("canary ")
    failures = [f"{name}: the token {n} time(s) in its output" for name, n in found.items() if n]
    if len(task_ids) != 2 * rounds or processor_lines < 4 * len(task_ids):
        failures.append(
            f"{len(task_ids)} canary tasks ({2 * rounds} expected), {processor_lines} lines "
            "of theirs: the search would prove nothing"
        )
    surfaces = ", ".join(f"{name} {n}" for name, n in requests.items())
    measured = (
        f"{sum(requests.values())} uses of one canary token ({surfaces}; header, ?token=, "
        f"subprotocol, metadata, a forged copy, an invalid Host, a refresh body) and "
        f"{len(task_ids)} tasks that log it 4 ways; answers {dict(sorted(statuses.items()))}; "
        f"lines searched: {', '.join(f'{n} {c}' for n, c in lines.items())}; occurrences of "
        f"the token or its signature: {', '.join(f'{n} {c}' for n, c in found.items())}; "
        f"'[redacted]' written: {', '.join(f'{n} {c}' for n, c in redacted.items())}"
    )
    return Result("S3", measured, failures, {"found": found, "lines": lines})


# --- S7: the secret key and the listeners -------------------------------------------------


def _rest_status(base_url: str, token: str) -> int:
    try:
        answer = httpx.get(f"{base_url}/api/tasks/", timeout=30,
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    except httpx.HTTPError as error:
        return f"{type(error).__name__}"  # type: ignore[return-value]
    return answer.status_code


def _grpc_status(address: str, token: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TaskServiceStub(channel)
        try:
            stub.ListTasks(
                pb.ListTasksRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )
            return "OK"
        except grpc.RpcError as error:
            return error.code().name


def _surfaces(base_url: str, grpc_address: str, token: str) -> dict[str, Any]:
    ws_base = _ws_base(base_url)

    async def both() -> tuple[Any, Any]:
        return (
            await _outcome(f"{ws_base}/ws?token={token}"),
            await _outcome(f"{ws_base}/ws", subprotocols=[token]),
        )

    query, subprotocol = asyncio.run(both())
    return {
        "REST": _rest_status(base_url, token),
        "WS ?token=": query,
        "WS subprotocol": subprotocol,
        "gRPC": _grpc_status(grpc_address, token),
    }


REFUSED = {"REST": 401, "WS ?token=": 4401, "WS subprotocol": 4401, "gRPC": "UNAUTHENTICATED"}
ACCEPTED = {"REST": 200, "WS ?token=": "welcome", "WS subprotocol": "welcome", "gRPC": "OK"}


def _forgery(
    base_url: str, grpc_address: str, user: Any, own_token: str
) -> tuple[list[str], list[str]]:
    """Tokens for `user` signed with each public key, and `own_token` (signed by the
    processes' own key) as the control: rows and failures."""
    rows, failures = [], []
    control = _surfaces(base_url, grpc_address, own_token)
    if control != ACCEPTED:
        failures.append(f"this run's own token was refused: {control}")
    for name, key in (("the old public key", OLD_PUBLIC_KEY),
                      ("the old compose key", OLD_COMPOSE_KEY)):  # fmt: skip
        got = _surfaces(base_url, grpc_address, _forged(user, key))
        rows.append(f"{name}: " + ", ".join(f"{s} {v}" for s, v in got.items()))
        if got != REFUSED:
            failures.append(f"a token signed with {name} was not refused: {got}")
    rows.append("this run's own token: " + ", ".join(f"{s} {v}" for s, v in control.items()))
    return rows, failures


def _listeners(pids: list[int]) -> list[tuple[str, int]]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    for conn in member.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN:
                            found.append((conn.laddr.ip, conn.laddr.port))
    return sorted(set(found))


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _answers_elsewhere(ports: list[int]) -> list[str]:
    """Ports that answer on an address of this machine other than loopback."""
    answered = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family != socket.AF_INET or entry.address.startswith("127."):
                continue
            for port in ports:
                with socket.socket() as probe:
                    probe.settimeout(1)
                    if probe.connect_ex((entry.address, port)) == 0:
                        answered.append(f"{entry.address}:{port}")
    return answered


def _in_repository(key: str) -> bool:
    """Whether `key` is anywhere in the checkout's tracked files."""
    found = subprocess.run(  # noqa: S603 (git, our own arguments)
        ["git", "grep", "-q", "-F", "-e", key],  # noqa: S607
        cwd=BASE_DIR,
        capture_output=True,
    )
    return found.returncode == 0


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in testing.process_env().items()
            if k not in {"SECRET_KEY", "SECRET_KEY_FILE", "DEBUG"}}  # fmt: skip
    return subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _compose_check() -> tuple[str, list[str]]:
    """docker-compose.yml: every service that gets SECRET_KEY gets it as
    ${SECRET_KEY:?...} (compose refuses to start without it), none has a literal one, and
    every published port is on PUBLISH_HOST (127.0.0.1 unless set)."""
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    failures = []
    with_key = []
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        if "SECRET_KEY" in env:
            with_key.append(name)
            if not re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", str(env["SECRET_KEY"])):
                failures.append(f"compose service {name}: SECRET_KEY is {env['SECRET_KEY']!r}")
        for port in service.get("ports") or []:
            if not str(port).startswith("${PUBLISH_HOST:-127.0.0.1}:"):
                failures.append(f"compose service {name} publishes {port}")
    docker = shutil.which("docker")
    compose_cli = "not installed"
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)  # noqa: S603
        if probe.returncode == 0:
            env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
            run = subprocess.run(  # noqa: S603
                [docker, "compose", "-f", "docker-compose.yml", "config", "-q"],
                cwd=BASE_DIR, env=env, capture_output=True, text=True,
            )  # fmt: skip
            compose_cli = f"`docker compose config` without SECRET_KEY: exit {run.returncode}"
            if run.returncode == 0:
                failures.append("docker compose config accepted the file without SECRET_KEY")
        else:
            compose_cli = "docker is installed, its compose plugin is not"
    row = (
        f"docker-compose.yml (static check, {compose_cli}): SECRET_KEY as ${{SECRET_KEY:?...}} "
        f"in all {len(with_key)} services that get it, no literal key, every published port on "
        "${PUBLISH_HOST:-127.0.0.1}"
    )
    return row, failures


def _production_starts() -> tuple[str, list[str]]:
    rows, failures = [], []
    for label, env, words in (
        ("no SECRET_KEY", {"DEBUG": "0"}, "SECRET_KEY must be set when DEBUG is off"),
        ("the old public key", {"DEBUG": "0", "SECRET_KEY": OLD_PUBLIC_KEY}, "publicly known"),
        ("the old public key, DEBUG=1", {"DEBUG": "1", "SECRET_KEY": OLD_PUBLIC_KEY},
         "publicly known"),
    ):  # fmt: skip
        run = _manage("check", **env)
        refused = run.returncode != 0 and words in run.stderr
        rows.append(f"{label}: {'refused' if refused else f'exit {run.returncode}'}")
        if not refused:
            failures.append(f"manage.py check with {label}: exit {run.returncode}")
    return "production start (manage.py check) with " + ", ".join(rows), failures


def s7_secret(*, full: bool) -> Result:
    """Quick: one Daphne and one gRPC server of the test run (forged tokens), gRPC's
    default listener, the compose file. Full: forged tokens and listeners against `make
    run` itself (devserver.launcher run with no SECRET_KEY, HOST, GRPC_HOST), started twice
    on a data directory of its own (the key made once, kept), the compose file, and
    production starts without a key or with a public one."""
    rows: list[str] = []
    failures: list[str] = []
    user = make_user("s7")
    user.set_password(PASSWORD)
    user.save()
    if full:
        launched, launch_failures = _s7_make_run(user)
        rows += launched
        failures += launch_failures
    else:
        web, base_url = testing.start_daphne()
        env = testing.process_env()
        for name in ("HOST", "GRPC_HOST"):
            env.pop(name, None)
        server = None
        try:
            server, address = start_grpc(host=None, env=env)
            forged_rows, forged_failures = _forgery(base_url, address, user, token_for(user))
            listening = _listeners([server.proc.pid])
            elsewhere = _answers_elsewhere([port for _, port in listening])
        finally:
            if server is not None:
                server.stop()
            web.stop()
        rows += forged_rows
        failures += forged_failures
        rows.append(
            "gRPC without HOST/GRPC_HOST listens on "
            + ", ".join(f"{ip}:{port}" for ip, port in listening)
            + (f"; answered on {elsewhere}" if elsewhere else "; refused on other addresses")
        )
        if not listening or not all(_is_loopback(ip) for ip, _ in listening) or elsewhere:
            failures.append(f"gRPC listens on {listening}, answered on {elsewhere}")
    row, compose_failures = _compose_check()
    rows.append(row)
    failures += compose_failures
    if full:
        # Each a `manage.py` start (seconds each); the quick form leaves them to
        # taskhub/tests/test_security.py, which CI runs anyway.
        row, production_failures = _production_starts()
        rows.append(row)
        failures += production_failures
    return Result("S7", "; ".join(rows), failures)


def _s7_make_run(user: Any) -> tuple[list[str], list[str]]:
    """`make run` (python -m devserver.launcher run) on the run's database and Redis, with
    no SECRET_KEY, SECRET_KEY_FILE, HOST or GRPC_HOST, on a data directory of its own;
    stopped and started again on it."""
    from devserver import embedded

    data_dir = Path(tempfile.mkdtemp(prefix="reliability-s7-"))
    port, grpc_port = testing.free_port(), testing.free_port()
    env = testing.process_env(TASKHUB_DATA_DIR=str(data_dir), PORT=str(port),
                              GRPC_PORT=str(grpc_port), WORKER_CONCURRENCY="1")  # fmt: skip
    for name in ("SECRET_KEY", "SECRET_KEY_FILE", "HOST", "GRPC_HOST", "DEBUG",
                 "WEB_INSTANCES", "WORKERS", embedded.CHILD_MARKER):  # fmt: skip
        env.pop(name, None)
    base_url, address = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    key_file = data_dir / "secret_key"
    rows: list[str] = []
    failures: list[str] = []

    def start() -> tuple[testing.ManagedProcess, float]:
        began = time.monotonic()
        run = testing.ManagedProcess(
            "make run", [sys.executable, "-m", "devserver.launcher", "run"], env
        )

        def up() -> bool:
            if run.proc.poll() is not None:
                raise AssertionError(f"make run exited:\n{run.output[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/healthz", timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", grpc_port), timeout=1):
                    return True
            except OSError:
                return False

        run.wait_until_up(lambda: testing.wait_until(up, timeout=180, message="make run"))
        return run, time.monotonic() - began

    run, took = start()
    try:
        stat = key_file.stat()
        key = key_file.read_text().strip()
        mode = oct(stat.st_mode & 0o777)
        public = secret_key.is_known_public(key)
        in_repo = _in_repository(key)
        rows.append(
            f"`make run` (devserver.launcher run; no SECRET_KEY, HOST or GRPC_HOST; up in "
            f"{took:.0f} s): made <its data directory>/secret_key ({len(key)} "
            f"characters, mode {mode}, public: {public}, in the repository: {in_repo})"
        )
        if mode != "0o600" or public or in_repo or len(key) < 50:
            failures.append(f"the development key: mode {mode}, public {public}, in repo {in_repo}")
        listening = _listeners([run.proc.pid])
        ports = sorted({p for _, p in listening})
        elsewhere = _answers_elsewhere(ports)
        rows.append(
            "its listeners: " + ", ".join(f"{ip}:{p}" for ip, p in listening)
            + (f"; answered on {elsewhere}" if elsewhere else "; none answers on another address")
        )  # fmt: skip
        if not all(_is_loopback(ip) for ip, _ in listening) or elsewhere or port not in ports:
            failures.append(f"make run listens on {listening}, answered on {elsewhere}")
        if grpc_port not in ports:
            failures.append(f"gRPC is not on {grpc_port}: {listening}")
        # A token this start signed (its key is not the runner's): the control, and what
        # must still be accepted after the restart.
        signed = httpx.post(
            f"{base_url}/api/auth/token/",
            json={"username": user.username, "password": PASSWORD},
            timeout=30,
        )
        issued = signed.json()["access"] if signed.status_code == 200 else "none"  # fmt: skip
        forged_rows, forged_failures = _forgery(base_url, address, user, issued)
        rows += forged_rows
        failures += forged_failures
    finally:
        stopped = run.stop(signal.SIGINT, timeout=60)
    run, took = start()
    try:
        kept = (
            key_file.read_text().strip() == key and key_file.stat().st_mtime_ns == stat.st_mtime_ns
        )
        own_after = _surfaces(base_url, address, issued)
        rows.append(
            f"stopped (exit {stopped}) and started again ({took:.0f} s): the key file "
            f"{'kept as it was' if kept else 'CHANGED'}; the token /api/auth/token/ issued "
            "before the restart, after it: "
            + ", ".join(f"{s} {v}" for s, v in own_after.items())
        )  # fmt: skip
        if not kept or own_after != ACCEPTED:
            failures.append(f"after a restart: key kept {kept}, the earlier token {own_after}")
    finally:
        run.stop(signal.SIGINT, timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    tracebacks = run.output.count("Traceback")
    if tracebacks:
        failures.append(f"{tracebacks} traceback(s) in make run's output")
    return rows, failures


# --- S4: the schema fuzz at volume --------------------------------------------------------


def s4_schema_fuzz(*, examples: int) -> Result:
    """taskhub/tests/test_schema_fuzz.py with SCHEMATHESIS_EXAMPLES=`examples`, in a pytest
    of its own (its own test database, test_<name>), niced: it is CPU for minutes."""
    env = {**os.environ, "SCHEMATHESIS_EXAMPLES": str(examples)}
    started = time.monotonic()
    # S603: this interpreter, a fixed test file; the only value in the command is a number.
    run = subprocess.run(  # noqa: S603
        ["nice", "-n", "10", sys.executable, "-m", "pytest",  # noqa: S607
         "taskhub/tests/test_schema_fuzz.py", "-v", "-p", "no:cacheprovider", "--no-header",
         # pytest.ini's 300 s per test is sized for CI's 100 examples; at 1,000, the token
         # endpoint (a password hash per example) took over 300 s in a full run.
         f"--timeout={max(300, examples * 2)}"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=4 * 3600,
    )  # fmt: skip
    took = time.monotonic() - started
    summary = (run.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    summary = re.sub(r" in [\d.]+s.*", "", summary)
    operations = Counter(
        outcome
        for outcome in re.findall(
            # -v names each operation's test once, "[GET /api/tasks/]" after its name since
            # devserver/pytest_workers.py gave schemathesis' items their operation back.
            r"test_every_operation_answers_as_its_schema_says(?:\[.+?\])? (PASSED|FAILED|ERROR)",
            run.stdout,
        )
    )
    failures = []
    if run.returncode != 0:
        log = Path(tempfile.mkdtemp(prefix="reliability-s4-")) / "pytest.log"
        log.write_text(run.stdout + run.stderr)
        failures.append(f"pytest exit {run.returncode}: {summary}; the whole output: {log}")
    by_outcome = ", ".join(f"{n} {outcome.lower()}" for outcome, n in sorted(operations.items()))
    measured = (
        f"{examples} examples per operation: {sum(operations.values())} operations "
        f"({by_outcome}); the whole file {summary}, in {took / 60:.0f} min (nice 10, its "
        "own test database created and migrated included)"
    )
    return Result("S4", measured, failures, {"operations": dict(operations), "seconds": took})
