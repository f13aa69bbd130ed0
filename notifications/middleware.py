"""ASGI middleware in front of the WebSocket consumer: Origin check and authentication.

Both refuse by accepting the handshake and then closing with a 44xx code, not by failing
the handshake: a browser reports a refused handshake as a bare 1006 and the client could
not tell a bad token (4401, log in again) from a foreign page (4403) or a network fault.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import AccessToken

from notifications import selectors

CLOSE_FORBIDDEN_ORIGIN = 4403

# The group message that ends a socket at once (consumers.EventConsumer.session_revoked),
# sent to a user's group when the account is deactivated or deleted, and to a session's
# group when that session logs out (taskhub/accounts.py).
SESSION_REVOKED = "session.revoked"


def session_group(session_key: str) -> str:
    """The Channels group of the sockets a browser session opened. A hash: the key itself
    is a credential, and group names travel through Redis."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def scope_session_key(scope: dict[str, Any]) -> str | None:
    """The session key a socket authenticated with; None when a token authenticated it."""
    if scope.get("auth_via") == "token":
        return None
    return getattr(scope.get("session"), "session_key", None)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def token_subprotocol(scope: dict[str, Any]) -> str | None:
    """The offered subprotocol that carries the JWT, if any (a JWT has three dot-separated
    parts; other subprotocols a client offers are ignored)."""
    for subprotocol in scope.get("subprotocols") or []:
        if subprotocol.count(".") == 2:
            return subprotocol
    return None


def subprotocol_to_accept(scope: dict[str, Any]) -> str | None:
    """A browser drops a connection whose handshake does not select one of the
    subprotocols it offered, so every accept (a refusal's too) selects the token's."""
    return scope.get("auth_subprotocol") or token_subprotocol(scope)


async def close_with(code: int, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept the handshake, then close it with `code` (see the module docstring)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    subprotocol = subprotocol_to_accept(scope)
    if subprotocol:
        accept["subprotocol"] = subprotocol
    await send(accept)
    await send({"type": "websocket.close", "code": code})


class WebsocketOriginValidator(OriginValidator):
    """channels' AllowedHostsOriginValidator, with two differences: a missing Origin is
    allowed (non-browser clients send none, and only browsers carry a victim's cookies
    across sites), and a foreign Origin is closed with 4403. ALLOWED_HOSTS is read per
    connection so settings overrides apply."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins=[])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = _header(scope, b"origin")
        if origin is None:
            return await self.application(scope, receive, send)
        self.allowed_origins = list(settings.ALLOWED_HOSTS)
        try:
            parsed = urlparse(origin)
        except ValueError:
            parsed = None
        if parsed is not None and self.valid_origin(parsed):
            return await self.application(scope, receive, send)
        return await close_with(CLOSE_FORBIDDEN_ORIGIN, scope, receive, send)


# user id claim -> (valid until, user). Process-wide: every socket of one user shares one
# lookup per WS_AUTH_CACHE_SECONDS, so a reconnect storm costs no query per socket.
_user_cache: dict[Any, tuple[float, Any]] = {}
_USER_CACHE_MAX = 100_000


async def _active_user(user_id: Any) -> Any:
    """The active user `user_id` names, or None; looked up at most once per
    WS_AUTH_CACHE_SECONDS (the bound on how long a deactivated user can still connect)."""
    now = time.monotonic()
    cached = _user_cache.get(user_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    user = await selectors.aactive_user(lookup_field=jwt_settings.USER_ID_FIELD, value=user_id)
    ttl = settings.TASKHUB_WS_AUTH_CACHE_SECONDS
    if user is None or ttl <= 0:
        # Only the active are cached: a refused user is let in as soon as reactivated.
        _user_cache.pop(user_id, None)
        return user
    if len(_user_cache) >= _USER_CACHE_MAX:
        for key in [k for k, (until, _) in _user_cache.items() if until <= now]:
            del _user_cache[key]
        if len(_user_cache) >= _USER_CACHE_MAX:
            _user_cache.clear()
    _user_cache[user_id] = (now + ttl, user)
    return user


def forget_user(user_id: Any) -> None:
    """Drop a cached lookup (the sweep found the user deactivated or gone)."""
    _user_cache.pop(user_id, None)
    _user_cache.pop(str(user_id), None)


def token_user_id(raw_token: str) -> tuple[Any, float] | None:
    """(user id, expiry as a Unix time) of a valid access token (signature, expiry, type),
    else None."""
    try:
        token = AccessToken(raw_token)
    except TokenError:
        return None
    user_id = token.get(jwt_settings.USER_ID_CLAIM)
    return None if user_id is None else (user_id, float(token["exp"]))


async def active_user(user_id: Any) -> Any:
    """The active user with that id (the process cache, then the batched read), else
    AnonymousUser."""
    return await _active_user(user_id) or AnonymousUser()


async def user_from_token(raw_token: str) -> Any:
    """The active user a valid access token names, else AnonymousUser."""
    claims = token_user_id(raw_token)
    if claims is None:
        return AnonymousUser()
    return await active_user(claims[0])


class JWTAuthMiddleware:
    """Authenticate by a JWT access token in the `token` query parameter or offered as a
    Sec-WebSocket-Protocol value. With a token the session stack is skipped altogether
    (it would cost a trip through the ORM's thread per connect for nothing); with a bad
    token the connection is anonymous even if a session cookie came along: an explicit
    credential that fails must not be papered over by another one. Without a token the
    session user (AuthMiddlewareStack, `session_application`) stands."""

    def __init__(self, application: Any, session_application: Any = None) -> None:
        self.application = application
        self.session_application = session_application or application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token_scope = await _with_token_user(scope)
        if token_scope is None:
            return await self.session_application(scope, receive, send)
        return await self.application(token_scope, receive, send)


async def _with_token_user(scope: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of `scope` with the token's user, or None when the socket brought no token.
    (Its own function: the middleware's frame lives as long as the socket, and would keep
    the parsed query and the token with it.)"""
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    raw_token = (query.get("token") or [None])[0]
    subprotocol = token_subprotocol(scope)
    if raw_token is None and subprotocol is not None:
        raw_token = subprotocol
    if raw_token is None:
        return None
    return {
        **scope,
        "auth_via": "token",
        "user": await user_from_token(raw_token),
        "auth_subprotocol": subprotocol,
    }


def WebsocketAuthStack(application: Any) -> Any:  # channels names its stacks this way
    """Origin check, then JWT auth, or session cookie auth when no token came, then the app."""
    return WebsocketOriginValidator(
        JWTAuthMiddleware(application, session_application=AuthMiddlewareStack(application))
    )
