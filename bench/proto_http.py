"""A lean HTTP path for REST create and search: the design that would pass issue 10's REST
and search targets, as a prototype measured in the same harness as the product and the
minimal-Django reference (docs/benchmarks.md, "The design that would pass: a lean HTTP
path").

**A measurement artefact, not product code.** It is routed only by the reference's
URLconf (bench/ref_django.py), so it runs in the reference's Daphne with TaskHub's own
settings and middleware, beside the reference's view. What it changes is where a
request's work runs: as async views on Daphne's event loop, with PostgreSQL through a
psycopg async pool and Redis through redis.asyncio, instead of DRF's sync views in
Django's per-request thread, with the sync pool's checked checkout and a blocking Redis
client per call. What each request does is the product's, through the product's modules:

- auth: `notifications.middleware.user_from_token`, what the WebSocket connects use
  (simplejwt's AccessToken with the project's SIMPLE_JWT settings, then the active-user
  check through a process cache and the batched async read);
- the user rate limit: taskhub/throttling.py's Lua script, key, rate and member, one
  round trip (a refused request answers 429 with DRF's wait);
- create: `TaskCreateInputSerializer` for the input, `services.task_build` for the row
  (the run rules, the retry policy, the callback URL check), `model_insert`'s INSERT and
  the event through `notifications_publish_event` in one statement, as `task_create`
  writes them; after it, the cache versions (tasks/cache.py's script) and the dispatcher
  nudge (tasks/nudge.py's flag, a dispatch message when it was clear) in one Redis
  pipeline, and the push through the channel layer's own async `group_send`; the answer
  is `TaskOutputSerializer`'s;
- search: `SearchFilterSerializer`, `task_search_for` and the same one-query page
  (`search.selectors._page_sql`), hits and their JSON as `SearchHitOutputSerializer`
  writes them, the page envelope DRF's paginator writes.

What it leaves out, which makes it a little cheaper than the product: the Idempotency-Key
path (answered 501), the create's metric counters and log line, session-cookie auth,
simplejwt's error bodies and WWW-Authenticate on a 401, search's `page_size` and its 404
past the last page, the product's handling of a Redis failure (logged, the request goes
on; here a 500 after the row is written, and no reload of the bump script after a Redis
restart), and the schema. A `callback_url` naming a host would be resolved on the loop
(the bench sends none). The figures show what the same work costs when it stays on the
loop.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache as django_cache
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ValidationError as DrfValidationError
from rest_framework.fields import get_error_detail
from rest_framework.utils.urls import replace_query_param

from notifications import protocol
from notifications.middleware import user_from_token
from notifications.selectors import _pool_kwargs
from notifications.services import _INSERT_EVENT
from search.selectors import SearchHit, _hit, _page_sql, task_search_for
from search.serializers import SearchFilterSerializer, SearchHitOutputSerializer
from search.views import SearchPagination
from taskhub import model_insert, throttling
from tasks import cache, nudge, queue
from tasks.api.serializers import TaskCreateInputSerializer, TaskOutputSerializer
from tasks.models import Task
from tasks.services import task_build, task_event_data

# One of each per process: Daphne runs every request on its one loop.
_state: dict[str, Any] = {}


def _redis() -> aioredis.Redis:
    if "redis" not in _state:
        _state["redis"] = aioredis.Redis.from_url(
            settings.TASKHUB_REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
    return _state["redis"]


async def _connection() -> psycopg.AsyncConnection[Any]:
    """A connection from a small idle list (autocommit, no prepared statements: the
    sockets' pool settings); one statement per request needs no more. The list keeps one
    connection per request that was ever in flight at once (32 under wrk -c32)."""
    idle: list[psycopg.AsyncConnection[Any]] = _state.setdefault("idle", [])
    if idle:
        return idle.pop()
    return await psycopg.AsyncConnection.connect(**_pool_kwargs())


async def _fetch(
    sql: str, params: list[Any], *, client_binding: bool = False
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The rows of one statement. Parameters are bound on the server, as publish() binds
    its statement (notifications/services.py, _run_publish), unless `client_binding`:
    then in the SQL text, as Django's backend binds the ORM's. A search needs the latter:
    bound on the server, a Python int arrives as int8, and `owner_id = $1` no longer
    matches the int4 column's btree_gin operator class, so the plan ANDs the owner's
    btree with the word's whole GIN posting list (prefix `deploym`: 34.8 ms against 9.2
    ms, measured)."""
    conn = await _connection()
    try:
        cursor_class = psycopg.AsyncClientCursor if client_binding else psycopg.AsyncCursor
        async with cursor_class(conn) as cursor:
            await cursor.execute(sql, params)
            rows = await cursor.fetchall()
            names = [column.name for column in cursor.description or ()]
    except BaseException:
        await conn.close()
        raise
    _state["idle"].append(conn)
    return names, rows


def _error(status: int, detail: Any) -> JsonResponse:
    return JsonResponse(detail if isinstance(detail, dict) else {"detail": detail}, status=status)


async def _authenticate(request: HttpRequest) -> Any:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or not raw:
        return None
    user = await user_from_token(raw)
    return user if user.is_authenticated else None


_throttle = throttling.UserRateThrottle()


async def _throttled(user: Any) -> float | None:
    """Seconds to wait when the user's rate is used up, else None (the product's rule)."""
    if _throttle.rate is None:
        return None
    num_requests, duration = _throttle.parse_rate(_throttle.rate)
    key = django_cache.make_key(_throttle.cache_format % {"scope": "user", "ident": user.pk})
    if "throttle" not in _state:
        _state["throttle"] = _redis().register_script(throttling._SLIDING_LOG)
    now = time.time()
    allowed, _count, oldest = await _state["throttle"](
        keys=[f"{key}:log"], args=[repr(now), duration, num_requests, secrets.token_hex(8)]
    )
    if allowed:
        return None
    return max(0.0, duration - (now - float(oldest)))


async def _gate(request: HttpRequest) -> tuple[Any, JsonResponse | None]:
    user = await _authenticate(request)
    if user is None:
        return None, _error(401, "Authentication credentials were not provided.")
    wait = await _throttled(user)
    if wait is not None:
        seconds = math.ceil(wait)
        response = _error(429, f"Request was throttled. Expected available in {seconds} seconds.")
        response["Retry-After"] = str(seconds)
        return None, response
    return user, None


def _validation_error(exc: Exception) -> JsonResponse:
    if isinstance(exc, DjangoValidationError):
        exc = DrfValidationError(detail=get_error_detail(exc))
    return _error(400, exc.detail)  # type: ignore[attr-defined]


@csrf_exempt
async def create(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return _error(405, f'Method "{request.method}" not allowed.')
    user, refused = await _gate(request)
    if refused is not None:
        return refused
    if "Idempotency-Key" in request.headers:
        return _error(501, "The prototype has no idempotent creates.")
    try:
        payload = TaskCreateInputSerializer(data=json.loads(request.body or b"{}"))
        payload.is_valid(raise_exception=True)
        task = task_build(owner=user, **payload.validated_data)
    except (DrfValidationError, DjangoValidationError) as exc:
        return _validation_error(exc)
    except ValueError:
        return _error(400, "JSON parse error.")
    # task_create's statement: the row and its event, one round trip, no transaction.
    write_sql, write_params = model_insert.insert_statement(task, using=DEFAULT_DB_ALIAS)
    created_at = task.created_at
    data = task_event_data(task, previous_status=None)
    _names, [(_pk, seq)] = await _fetch(
        f"WITH written AS ({write_sql}) {_INSERT_EVENT}",
        [*write_params, user.pk, protocol.TASK_UPDATED, json.dumps(data), str(task.id), created_at],
    )
    model_insert.mark_inserted(task, using=DEFAULT_DB_ALIAS)
    await _after_create(task, seq, data)
    return JsonResponse(TaskOutputSerializer(task).data, status=201, encoder=DjangoJSONEncoder)


async def _after_create(task: Task, seq: int, data: dict[str, Any]) -> None:
    """What task_create's after-commit callbacks do, in the order they run there: the
    cache versions, the push, the nudge (the bump and the nudge flag in one pipeline)."""
    client = _redis()
    if "bump" not in _state:
        _state["bump"] = await client.script_load(cache._BUMP_SCRIPT)
    keys = [cache._task_version_key(task.id), cache._owner_version_key(task.owner_id)]
    args = [*(cache._fresh_version() for _ in keys), cache.VERSION_TTL]
    # Plain EVALSHA: redis-py's Script in a pipeline asks SCRIPT EXISTS first, one more
    # round trip (notifications.services.connection_register_many says the same).
    async with client.pipeline(transaction=False) as pipe:
        pipe.evalsha(_state["bump"], len(keys), *[django_cache.make_key(k) for k in keys], *args)
        pipe.set(nudge.FLAG, 1, nx=True, ex=nudge.FLAG_TTL)
        _bumped, first = await pipe.execute()
    frame = protocol.envelope(protocol.TASK_UPDATED, data, id=seq, ts=task.created_at)
    await get_channel_layer().group_send(
        protocol.user_group(task.owner_id), {"type": "event.push", "frame": frame}
    )
    if first:  # rare under load: the flag coalesces a burst into one dispatch
        await sync_to_async(queue.send_dispatch, thread_sensitive=False)(
            expires=settings.TASKHUB_QUEUED_RESEND_AFTER
        )


_HIT = SearchHitOutputSerializer()


async def search(request: HttpRequest) -> JsonResponse:
    user, refused = await _gate(request)
    if refused is not None:
        return refused
    filters = SearchFilterSerializer(data=request.GET)
    try:
        filters.is_valid(raise_exception=True)
        results = task_search_for(user=user, **filters.validated_data)
    except (DrfValidationError, DjangoValidationError) as exc:
        return _validation_error(exc)
    paginator = SearchPagination()
    size = paginator.page_size
    number = request.GET.get("page", "1")
    page = int(number) if number.isdigit() and int(number) >= 1 else 1
    hits: list[SearchHit] = []
    count = 0
    if results._tsquery is not None:
        sql, params = _page_sql(results._tsquery, results._filters, (page - 1) * size, size)
        names, rows = await _fetch(sql, params, client_binding=True)
        fields = [f.attname for f in Task._meta.concrete_fields]
        width = len(fields)
        for row in rows:
            task = Task.from_db(DEFAULT_DB_ALIAS, fields, row[:width])
            for name, value in zip(names[width:], row[width:], strict=True):
                setattr(task, name, value)
            hits.append(_hit(task))
        count = int(rows[0][names.index("total")]) if rows else 0
    url = request.build_absolute_uri()
    more = page * size < count
    return JsonResponse(
        {
            "count": count,
            "next": replace_query_param(url, "page", page + 1) if more else None,
            "previous": replace_query_param(url, "page", page - 1) if page > 1 else None,
            "results": [_HIT.to_representation(hit) for hit in hits],
        },
        encoder=DjangoJSONEncoder,
    )
