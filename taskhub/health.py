"""/healthz: the process answers. /readyz: and it can reach PostgreSQL and Redis."""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

# How long /readyz waits for a database connection before it says not ready.
READYZ_DATABASE_WAIT = 2.0


def _check_database() -> None:
    """SELECT 1, waiting at most READYZ_DATABASE_WAIT for a connection. Not through
    connection.cursor() when a pool is configured: that waits DB_POOL_TIMEOUT (10 s) for a
    connection, so a probe sent while PostgreSQL restarts was held until it was back and
    then answered "ready" (issue 13, R2); a readiness probe needs its answer now
    (Kubernetes gives it 1 s by default)."""
    pool = getattr(connection, "pool", None)
    if pool is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return
    pool.open()  # as Django does before its first getconn (a no-op once open)
    with pool.connection(timeout=READYZ_DATABASE_WAIT) as conn:
        conn.execute("SELECT 1")


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        _check_database()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(
            settings.TASKHUB_REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            client.ping()
        finally:
            client.close()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
