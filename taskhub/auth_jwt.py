"""JWT authentication for the REST API with the user lookup cached per process.

simplejwt's JWTAuthentication reads the user row on every request (1.9 ms of Daphne's
CPU per REST create, docs/benchmarks.md, "REST create: where the time went (this
round)"). Here an active user found by a token is kept for REST_AUTH_CACHE_SECONDS
(default 5 s) in this process, as the WebSocket auth does for connects
(notifications/middleware.py, WS_AUTH_CACHE_SECONDS).

Bounded staleness, and where it is zero:
- a user saved or deleted in this process (user_deactivate, the admin, any save) is
  dropped from this process's cache at once (user_changed, connected in
  TaskHubConfig.ready, taskhub/apps.py), so its next request
  here reads the row again and an inactive user is refused;
- another web process keeps accepting that user's tokens for at most
  REST_AUTH_CACHE_SECONDS after the deactivation committed (so does a bulk
  QuerySet.update(), which sends no signal, in every process);
- REST_AUTH_CACHE_SECONDS=0 turns the cache off: every request reads the row, as before.
Only active users are cached: an inactive or unknown one is read again every time, so a
reactivated user is let in at once. Every request gets its own copy of the cached user,
so nothing one request sets on it is seen by another.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from django.conf import settings
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.settings import api_settings

_MAX_ENTRIES = 10_000
_cache: dict[Any, tuple[float, Any]] = {}
# Sync views run in several threads (one per request under Daphne): a read is one atomic
# dict operation, but the eviction iterates the dict, which must not change meanwhile, so
# every write holds the lock.
_lock = threading.Lock()


class CachedJWTAuthentication(JWTAuthentication):
    def get_user(self, validated_token: Any) -> Any:
        ttl = settings.TASKHUB_REST_AUTH_CACHE_SECONDS
        user_id = validated_token.get(api_settings.USER_ID_CLAIM)
        if ttl <= 0 or user_id is None or api_settings.CHECK_REVOKE_TOKEN:
            # (The revoke check compares the token with the row's password hash.)
            return super().get_user(validated_token)
        now = time.monotonic()
        key = str(user_id)  # the claim is a string in new tokens, an int in old ones
        cached = _cache.get(key)
        if cached is not None and cached[0] > now:
            return copy.copy(cached[1])
        user = super().get_user(validated_token)  # raises for unknown or inactive users
        with _lock:
            if len(_cache) >= _MAX_ENTRIES:
                for stale in [k for k, (until, _) in _cache.items() if until <= now]:
                    del _cache[stale]
                if len(_cache) >= _MAX_ENTRIES:
                    _cache.clear()
            _cache[key] = (now + ttl, copy.copy(user))
        return user


class CachedJWTScheme(SimpleJWTScheme):
    """The OpenAPI schema describes it as simplejwt's (the same header, the same tokens)."""

    target_class = "taskhub.auth_jwt.CachedJWTAuthentication"


def forget_user(user_id: Any) -> None:
    """Drop a cached user."""
    with _lock:
        _cache.pop(str(user_id), None)


def user_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """post_save and post_delete of the user model (TaskHubConfig.ready): any save counts
    (deactivation, a changed password, the admin)."""
    forget_user(getattr(instance, api_settings.USER_ID_FIELD))
