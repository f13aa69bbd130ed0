"""Versioned cache of the task API's hot reads: a task's detail and a user's first list page.

Entries are never deleted; they go dead. Every key embeds a version number kept in its own
cache key (one per task, one per owner), and tasks.change_hooks bumps the versions AFTER
the transaction that changed the task commits. A cached read therefore never shows a task
older than its last committed change. The race that matters:

    reader: read version v -> miss -> read the database -> store under v
    writer:                      commit -> bump version to v+1

If the reader's database read came before the commit (an old status), it also read the
version before the bump (the bump follows the commit), so it stores under v, which nobody
reads any more: the entry is born dead. A reader that sees v+1 reads the database after
the commit. That is why the version is read before the database, and the bump runs after
commit, never before. (A bump lost to a crash between commit and bump, or to a Redis
outage, leaves an entry stale for at most CACHE_TTL seconds.)

A missing version (never set, expired, evicted) starts at a random 62-bit number, so it
can never come back to a number an older entry still lives under.

Only the API reads through here. The dispatcher, the runner and the reaper read the
database directly and never fill or consult the cache; they only bump, through services.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django_redis import get_redis_connection

from taskhub.metrics import CACHE_HITS, CACHE_MISSES
from taskhub.outages import REDIS, is_redis_outage

logger = logging.getLogger(__name__)

TASK_DETAIL = "task_detail"
TASK_LIST = "task_list"

# Versions outlive the entries made under them many times over; an expired one is simply
# restarted (see above).
VERSION_TTL = 24 * 3600


def _task_version_key(task_id: UUID | str) -> str:
    return f"tasks:version:task:{task_id}"


def _owner_version_key(owner_id: int) -> str:
    return f"tasks:version:owner:{owner_id}"


def _fresh_version() -> int:
    return secrets.randbits(62) | (1 << 32)


# Bump each version in KEYS: +1 if it exists, else start it at the fresh number in ARGV
# (same index). One script, so a change's bumps cost one Redis round trip whatever the
# number of keys, and no other client can slip in between the check and the write.
# django-redis stores integers as plain numbers, so INCR and cache.get agree.
_BUMP_SCRIPT = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCR', key)
  else
    redis.call('SET', key, ARGV[i], 'EX', ARGV[#KEYS + 1])
  end
end
return #KEYS
"""


@functools.cache
def _bump_script() -> Any:
    # redis-py's pool reconnects after a fork, so one per process is safe under prefork.
    return get_redis_connection("default").register_script(_BUMP_SCRIPT)


def _bump(*keys: str) -> None:
    _bump_script()(
        keys=[cache.make_key(key) for key in keys],
        args=[*(_fresh_version() for _ in keys), VERSION_TTL],
    )


def task_versions_bump(*, task_id: UUID | str, owner_id: int | None) -> None:
    """Make every cached read of this task (and of its owner's lists) dead. Call after
    commit only (tasks.change_hooks does)."""
    tasks_versions_bump([(task_id, owner_id)])


def tasks_versions_bump(changed: Sequence[tuple[UUID | str, int | None]]) -> None:
    """task_versions_bump for many (task_id, owner_id) pairs at once: one Redis call (a
    dispatcher run changes hundreds of tasks in one commit)."""
    keys = [_task_version_key(task_id) for task_id, _ in changed]
    owners = dict.fromkeys(owner for _, owner in changed if owner is not None)
    keys += [_owner_version_key(owner) for owner in owners]
    if not keys:
        return
    try:
        _bump(*keys)
    except Exception as exc:
        _failed(
            exc,
            f"cache versions not bumped (task {changed[0][0]} first); cached reads may be "
            "stale for up to CACHE_TTL seconds",
        )
    else:
        REDIS.recovered()


def _failed(exc: Exception, consequence: str) -> None:
    # Redis down: one line for the whole outage (taskhub/outages.py). Anything else is a
    # bug to see with its traceback, but it degrades the same way.
    if is_redis_outage(exc):
        REDIS.failed(exc, consequence)
    else:
        logger.warning("cache: %s", consequence, exc_info=exc)


def _version(key: str) -> int:
    version = cache.get(key)
    if version is None:
        fresh = _fresh_version()
        if cache.add(key, fresh, timeout=VERSION_TTL):
            return fresh
        version = cache.get(key)
    # Evicted again in between: an unused number is as good as any (a miss, never stale).
    return int(version) if version is not None else _fresh_version()


def _read_through(name: str, version_key: str, key: str, fill: Callable[[], Any]) -> Any:
    try:
        # The version first, the database (in fill) after: see the module docstring.
        versioned_key = f"{key}:v{_version(version_key)}"
        cached = cache.get(versioned_key)
    except Exception as exc:
        _failed(exc, "cached reads go to the database")
        return fill()
    REDIS.recovered()
    if cached is not None:
        CACHE_HITS.labels(cache=name).inc()
        return cached
    CACHE_MISSES.labels(cache=name).inc()
    value = fill()
    try:
        cache.set(versioned_key, value, timeout=settings.CACHES["default"]["TIMEOUT"])
    except Exception as exc:
        _failed(exc, f"{name} read not stored in the cache")
    return value


def _user_key(user: AbstractBaseUser) -> str:
    # Ids come back when a database is recreated (a test run, a restored dump) while Redis
    # keeps its keys; the join time tells a new user 7 from an old one.
    joined = getattr(user, "date_joined", None)
    return f"{user.pk}.{int(joined.timestamp() * 1_000_000) if joined else 0}"


def task_detail_cached(
    *, user: AbstractBaseUser, task_id: UUID | str, fill: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The task's API representation as `fill()` makes it, cached per reader: `fill` runs
    the owner-scoped lookup (Http404 for someone else's task, which is not cached)."""
    key = f"tasks:detail:{_user_key(user)}:{task_id}"
    return _read_through(TASK_DETAIL, _task_version_key(task_id), key, fill)


def task_list_first_page_cached(
    *,
    user: AbstractBaseUser,
    status: str | None,
    page_size: int,
    fill: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """The first page of the user's list, newest first, `page_size` rows, optionally one
    status: `{"count": n, "results": [...]}` as `fill()` makes it."""
    key = f"tasks:list:{_user_key(user)}:{status or 'all'}:{page_size}"
    return _read_through(TASK_LIST, _owner_version_key(user.pk), key, fill)
