"""The test suite on several pytest-xdist workers at once (`make test` runs two).

Each worker is a pytest process of its own. pytest-django already gives each one a test
database of its own (`test_<name>_gw0`, `test_<name>_gw1`, ...). Redis has no such
thing, so this plugin gives each worker a Redis database number of its own: worker n uses
REDIS_URL's number + n (modulo 16, Redis' default count). The cache, the Celery broker
and the channel layer's prefix all derive from REDIS_URL (taskhub/settings.py), and the
processes a test starts inherit the worker's REDIS_URL (devserver/testing.py), so one
worker's purge, flush, queue or registry scan never meets another's.

It has to change the environment before Django reads its settings, which pytest-django
does in its own `pytest_load_initial_conftests` hook; a hook wrapper runs before every
plain implementation, so this one is a wrapper. Loaded with `-p devserver.pytest_workers`
(pytest.ini), it does nothing outside a worker.

It also keeps every test's node id unique, which `--dist loadfile` needs: the scheduler
keys its work by node id, so tests that share one run once, silently. Schemathesis 4.32's
items (taskhub/tests/test_schema_fuzz.py, one per API operation) all had the test
function's bare id under pytest 9.2, which builds an id from the parametrization and
schemathesis does not parametrize through pytest: 36 of the 37 operations went unfuzzed
under xdist. They get their operation back in the id, and a collection with duplicate ids
is an error.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator
from urllib.parse import urlsplit, urlunsplit

import pytest

# Redis' default `databases 16`; a server with more still accepts these numbers.
REDIS_DATABASES = 16
# The REDIS_URL `make test` gave, before a worker moved it on (the tests check the move).
BASE_REDIS_URL = "TASKHUB_TEST_BASE_REDIS_URL"


def worker_index() -> int | None:
    """0 for pytest-xdist's worker gw0, 1 for gw1, ...; None when not in a worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def redis_url_for_worker(url: str, index: int) -> str:
    """`url` with its database number moved on by `index` (redis://host:6379/9 -> /10).
    Only the number in the path is moved: a socket path or a `?db=` (which redis-py
    prefers to the path) would leave every worker on one database, so they are refused."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or "db=" in parts.query
        or not (path == "" or path.isdigit())
    ):
        raise pytest.UsageError(
            f"REDIS_URL={url!r}: the test workers need redis[s]://host:port/<number> to give "
            "each a database of its own (or TEST_WORKERS=0)"
        )
    base = int(path) if path else 0
    return urlunsplit(parts._replace(path=f"/{(base + index) % REDIS_DATABASES}"))


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args) -> Generator[None, None, None]:
    index = worker_index()
    if index is not None:
        # taskhub/settings.py's default when unset; `make test` always sets it.
        base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        os.environ[BASE_REDIS_URL] = base
        os.environ["REDIS_URL"] = redis_url_for_worker(base, index)
    return (yield)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # Schemathesis' items carry their operation ("GET /api/tasks/") as operation_label.
        label = getattr(item, "operation_label", None)
        if label and not item.nodeid.endswith("]"):
            # pytest 9.2 has no public way to set an id.
            item._id = item.parent.id.child(item.originalname).with_params(label)
    repeated = [
        nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1
    ]
    if repeated:
        raise pytest.UsageError(
            f"{len(repeated)} node id(s) shared by several tests, which pytest-xdist would run "
            f"once each: {repeated[:5]}"
        )
