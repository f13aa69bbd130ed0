"""A lean HTTP path for REST create and search: the design tried for issue 10's REST and
search targets, as a prototype measured in the same harness as the product and the
minimal-Django reference (docs/benchmarks.md, "The lean HTTP path: the design tried for
REST create and search"). Its work is written once, as `create_answer` and
`search_answer`, and served two ways: by the views below, on Daphne with Django's
handler (the design tried), and by bench/proto_http_tier.py, a plain asyncio HTTP server
with no Django request handling in front (the design that would pass, "An asyncio HTTP
tier measured").

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

import asyncio
import json
import math
import secrets
import time
from dataclasses import dataclass, field
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
from django.http import HttpRequest, HttpResponse, QueryDict
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

# One of each per process: the server runs every request on its one event loop.
_state: dict[str, Any] = {}


def _redis() -> aioredis.Redis:
    if "redis" not in _state:
        _state["redis"] = aioredis.Redis.from_url(
            settings.TASKHUB_REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
    return _state["redis"]


# At most this many PostgreSQL sessions per process for the statements below (the token's
# user check has its own pool, notifications/selectors.py: WS_DB_POOL_SIZE more): requests
# past it wait for one. Two cores cannot run more statements at once than a few; 32 wrk
# connections each holding a session would only add sessions (and, beside the stack,
# reach max_connections).
DB_CONNECTIONS = 8


async def _connection() -> psycopg.AsyncConnection[Any]:
    """A connection from a small idle list (autocommit, no prepared statements: the
    sockets' pool settings), after taking one of DB_CONNECTIONS slots (`_fetch` gives it
    back); one statement per request needs no more."""
    if "slots" not in _state:
        _state["slots"] = asyncio.Semaphore(DB_CONNECTIONS)
        _state["idle"] = []
    await _state["slots"].acquire()
    try:
        if _state["idle"]:
            return _state["idle"].pop()
        return await psycopg.AsyncConnection.connect(**_pool_kwargs())
    except BaseException:
        _state["slots"].release()
        raise


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
    else:
        _state["idle"].append(conn)
    finally:
        _state["slots"].release()
    return names, rows


@dataclass
class Answer:
    """A response, whichever server sends it: Daphne through the views below, or the
    asyncio HTTP tier (bench/proto_http_tier.py)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return json.dumps(self.body, cls=DjangoJSONEncoder).encode()


def error_answer(status: int, detail: Any) -> Answer:
    return Answer(status, detail if isinstance(detail, dict) else {"detail": detail})


async def _authenticate(authorization: str) -> Any:
    scheme, _, raw = authorization.partition(" ")
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


async def _gate(authorization: str) -> tuple[Any, Answer | None]:
    user = await _authenticate(authorization)
    if user is None:
        return None, error_answer(401, "Authentication credentials were not provided.")
    wait = await _throttled(user)
    if wait is not None:
        seconds = math.ceil(wait)
        refused = error_answer(
            429, f"Request was throttled. Expected available in {seconds} seconds."
        )
        refused.headers["Retry-After"] = str(seconds)
        return None, refused
    return user, None


def _validation_error(exc: Exception) -> Answer:
    if isinstance(exc, DjangoValidationError):
        exc = DrfValidationError(detail=get_error_detail(exc))
    return error_answer(400, exc.detail)  # type: ignore[attr-defined]


async def create_answer(*, authorization: str, idempotency_key: bool, body: bytes) -> Answer:
    """POST /api/tasks/'s work: `authorization` is the header's value ("" when absent),
    `idempotency_key` whether the request carries one, `body` the raw JSON."""
    user, refused = await _gate(authorization)
    if refused is not None:
        return refused
    if idempotency_key:
        return error_answer(501, "The prototype has no idempotent creates.")
    try:
        payload = TaskCreateInputSerializer(data=json.loads(body or b"{}"))
        payload.is_valid(raise_exception=True)
        task = task_build(owner=user, **payload.validated_data)
    except (DrfValidationError, DjangoValidationError) as exc:
        return _validation_error(exc)
    except ValueError:
        return error_answer(400, "JSON parse error.")
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
    return Answer(201, TaskOutputSerializer(task).data)


def _response(answer: Answer) -> HttpResponse:
    return HttpResponse(
        answer.content(),
        status=answer.status,
        content_type="application/json",
        headers=answer.headers,
    )


@csrf_exempt
async def create(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _response(error_answer(405, f'Method "{request.method}" not allowed.'))
    answer = await create_answer(
        authorization=request.headers.get("Authorization", ""),
        idempotency_key="Idempotency-Key" in request.headers,
        body=request.body,
    )
    return _response(answer)


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


async def search_answer(*, authorization: str, query: QueryDict, url: str) -> Answer:
    """GET /search's work: `query` the request's parameters, `url` its absolute URL
    (the page links are built from it)."""
    user, refused = await _gate(authorization)
    if refused is not None:
        return refused
    filters = SearchFilterSerializer(data=query)
    try:
        filters.is_valid(raise_exception=True)
        results = task_search_for(user=user, **filters.validated_data)
    except (DrfValidationError, DjangoValidationError) as exc:
        return _validation_error(exc)
    paginator = SearchPagination()
    size = paginator.page_size
    number = query.get("page", "1")
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
    more = page * size < count
    return Answer(
        200,
        {
            "count": count,
            "next": replace_query_param(url, "page", page + 1) if more else None,
            "previous": replace_query_param(url, "page", page - 1) if page > 1 else None,
            "results": [_HIT.to_representation(hit) for hit in hits],
        },
    )


async def search(request: HttpRequest) -> HttpResponse:
    answer = await search_answer(
        authorization=request.headers.get("Authorization", ""),
        query=request.GET,
        url=request.build_absolute_uri(),
    )
    return _response(answer)
