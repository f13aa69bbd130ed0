"""TaskHub settings, read from the environment (see the README's settings table).

One naming scheme (docs/architecture.md, "Settings"): an environment variable has a short
name without a prefix (WS_MAX_FRAME_BYTES, CHAT_TYPING_INTERVAL), and that name never
changes under a deployment. It sets Django's or a library's own setting where one exists
(DEBUG, ALLOWED_HOSTS, DATABASES from DATABASE_URL, DATA_UPLOAD_MAX_MEMORY_SIZE from
MAX_REQUEST_BYTES, REST_FRAMEWORK, CHANNEL_LAYERS, ...); otherwise TaskHub's own setting,
named TASKHUB_ + the variable's name (WS_MAX_FRAME_BYTES -> settings.TASKHUB_WS_MAX_FRAME_BYTES,
WORKER_SHUTDOWN_GRACE -> settings.TASKHUB_WORKER_SHUTDOWN_GRACE). TaskHub's constants carry
TASKHUB_ too; values only this file uses start with `_`. taskhub/tests/test_architecture.py
checks the scheme.
"""

from __future__ import annotations

import os
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import dj_database_url
import redis.connection
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from taskhub import secret_key
from taskhub.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_log_level,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
# Never a key from the repository (taskhub/secret_key.py, docs/security.md): production
# must set SECRET_KEY; a development run without one gets a random key kept in
# SECRET_KEY_FILE, made on first start. A publicly known key is refused in every mode.
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY:
    secret_key.refuse_public_key(SECRET_KEY, source="SECRET_KEY")
elif DEBUG:
    SECRET_KEY = secret_key.load_or_create(
        Path(env_str("SECRET_KEY_FILE") or BASE_DIR / ".data" / "secret_key")
    )
else:
    raise ImproperlyConfigured(
        "SECRET_KEY must be set when DEBUG is off; make one with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`"
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # Daphne first: it takes over `runserver` so the dev server speaks WebSocket too.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # ServeStatic's configuration checks (its middleware serves the files).
    "servestatic",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework_simplejwt",
    "drf_spectacular",
    # Swagger UI's and ReDoc's files as static files of our own: /api/docs/ and
    # /api/redoc/ work on a network without the CDNs drf-spectacular loads them from.
    "drf_spectacular_sidecar",
    "django_prometheus",
    "channels",
    "tasks",
    "notifications",
    "search",
    # Its ready() plugs the chat commands into the /ws socket (notifications.protocol).
    "chat.apps.ChatConfig",
    # Signed webhooks on a task's terminal status; its ready() plugs the outbox and the
    # callback_url check into tasks (tasks.extensions).
    "webhooks.apps.WebhooksConfig",
    # Recurring tasks; its ready() registers the firing with the dispatcher's tick.
    "schedules.apps.SchedulesConfig",
    # The project package itself, for the browser page's templates and static files.
    "taskhub",
]


class _MiddlewareList(list):
    """Django's system checks ask `"django.middleware.security.SecurityMiddleware" in
    settings.MIDDLEWARE` (and so for CSRF, X-Frame-Options, sessions) and skip the HSTS,
    SSL-redirect and cookie checks when the answer is no. taskhub.middleware's classes are
    subclasses of those, so for them the answer is yes: `check --deploy` checks the same."""

    STAND_INS = {
        "django.middleware.security.SecurityMiddleware": "taskhub.middleware.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware": (
            "taskhub.middleware.SessionMiddleware"
        ),
        "django.middleware.common.CommonMiddleware": "taskhub.middleware.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware": "taskhub.middleware.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware": (
            "taskhub.middleware.AuthenticationMiddleware"
        ),
        "django.contrib.messages.middleware.MessageMiddleware": (
            "taskhub.middleware.MessageMiddleware"
        ),
        "django.middleware.clickjacking.XFrameOptionsMiddleware": (
            "taskhub.middleware.XFrameOptionsMiddleware"
        ),
    }

    def __contains__(self, path: object) -> bool:
        return list.__contains__(self, path) or list.__contains__(
            self,
            self.STAND_INS.get(path),  # type: ignore[arg-type]
        )


# Django's and django-prometheus's middlewares as taskhub.middleware runs them on Daphne:
# hooks that do no I/O inline on the event loop, not each through a hop to a thread
# and back (about 18 hops per request before, a third of Daphne's CPU per REST create).
MIDDLEWARE = _MiddlewareList(
    [
        "taskhub.middleware.PrometheusBeforeMiddleware",
        "taskhub.middleware.SecurityMiddleware",
        # Names the instance in X-TaskHub-Server (taskhub/instance.py, docs/scaling.md).
        "taskhub.instance.instance_header_middleware",
        # A body over MAX_REQUEST_BYTES: 413 with a JSON message (taskhub/body_limit.py).
        "taskhub.body_limit.body_limit_middleware",
        # Async-only (unlike WhiteNoise's, which it forks): a sync middleware would make every
        # request hop to a thread and back, and Daphne then hangs on SIGTERM with a request
        # in flight (the exiting interpreter joins a thread that waits for the stopped loop).
        # (taskhub.middleware's subclass: a static URL naming no file is a 404 under DEBUG
        # too, not a 500.)
        "taskhub.middleware.StaticFilesMiddleware",
        "taskhub.middleware.SessionMiddleware",
        "taskhub.middleware.CommonMiddleware",
        "taskhub.middleware.CsrfViewMiddleware",
        "taskhub.middleware.AuthenticationMiddleware",
        "taskhub.middleware.MessageMiddleware",
        "taskhub.middleware.XFrameOptionsMiddleware",
        "taskhub.middleware.PrometheusAfterMiddleware",
        # Last, so its process_exception runs first: PostgreSQL unreachable -> 503 with
        # Retry-After for the plain Django views (DRF's go through EXCEPTION_HANDLER below).
        "taskhub.api_errors.DatabaseUnavailableMiddleware",
    ]
)

ROOT_URLCONF = "taskhub.urls"
ASGI_APPLICATION = "taskhub.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Backing services -------------------------------------------------------------------

_DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/taskhub")
# Read by what talks to Redis itself (the nudge flag, the socket registry, health).
TASKHUB_REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

DATABASES = {
    "default": dj_database_url.parse(
        _DATABASE_URL,
        # Persistent connections are per thread; under ASGI each request may run in a new
        # thread, so the default is 0 (Django's advice for async servers). Workers may raise it.
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...)")
# How a PostgreSQL connection notices a peer that went silent: libpq's parameters, which
# Django passes on from OPTIONS to every connection (the ORM's pool, the sockets' async
# reads in notifications/selectors.py, Celery's processes). Without them a connect to a
# host that drops packets waited out the kernel's SYN retries (about 2 min), and a
# connection waiting for a reply from a host that vanished (a failover, a NAT or firewall
# that forgot an idle flow) waited for the kernel's default keepalive, over 2 hours.
# Keepalive probes (after DB_KEEPALIVE_IDLE s of silence, then every 10 s) and
# TCP_USER_TIMEOUT (how long sent bytes or unanswered probes may go unacknowledged) end
# such a connection within DB_TCP_USER_TIMEOUT, by default the idle time plus three
# probes. On Linux the user timeout also decides when probing gives up, so by default it
# is that long: one lost probe does not end a healthy connection. A long query is not
# cut short: the server's kernel answers the probes. Behind PgBouncer, PgBouncer is the
# peer: its own tcp_keepidle and tcp_user_timeout cover the server side
# (docs/scaling.md). A DATABASE_URL that sets one of these itself (?keepalives_idle=60)
# keeps its value.
_DB_SILENT_PEER = {
    "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5, minimum=1),
    "keepalives": 1,
    "keepalives_idle": env_int("DB_KEEPALIVE_IDLE", 30, minimum=1),
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_DB_OPTIONS = DATABASES["default"].setdefault("OPTIONS", {})
for _key, _value in _DB_SILENT_PEER.items():
    _DB_OPTIONS.setdefault(_key, _value)
# From the keepalive values the connection actually gets (the URL's, if it set them).
_DB_PROBING = int(_DB_OPTIONS["keepalives_idle"]) + int(_DB_OPTIONS["keepalives_interval"]) * int(
    _DB_OPTIONS["keepalives_count"]
)
_DB_OPTIONS.setdefault(
    "tcp_user_timeout",
    1000 * env_int("DB_TCP_USER_TIMEOUT", _DB_PROBING, minimum=1),  # ms
)
# Django's PostgreSQL backend wrapped by django-prometheus: query and error counters
# (taskhub/db_backend: its cursor class built once, not on every connect).
DATABASES["default"]["ENGINE"] = "taskhub.db_backend"
# A psycopg 3 pool per process (taskhub/db_pool.py says why, and how it survives Celery's
# fork); DB_POOL_MAX=0 turns it off (a new connection per request, or DB_CONN_MAX_AGE).
# DB_POOL_MAX is sized for the busiest processes: Daphne runs each request on a thread of
# its own, gRPC up to GRPC_MAX_WORKERS calls. Celery's processes (a pool process runs one
# task at a time) are capped at DB_POOL_MAX_CELERY (taskhub/db_pool.py, cap_pool_size).
# Connections open on demand up to the max and close again, one per 10 idle minutes, down
# to the min: plan for the sum of the maxima (docs/scaling.md).
# A deployment that asked for persistent connections (DB_CONN_MAX_AGE) keeps them.
_DB_POOL_MAX = env_int("DB_POOL_MAX", 0 if DATABASES["default"]["CONN_MAX_AGE"] else 32, minimum=0)
if _DB_POOL_MAX:
    from taskhub.db_pool import keep_reconnecting_while_requests_wait, register_fork_hook

    if DATABASES["default"]["CONN_MAX_AGE"]:
        raise ImproperlyConfigured("DB_CONN_MAX_AGE must be 0 (or unset) when DB_POOL_MAX > 0")
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(env_int("DB_POOL_MIN", 2, minimum=0), _DB_POOL_MAX),
        "max_size": _DB_POOL_MAX,
        # A request waits at most this long for a free connection, then answers 503
        # (taskhub/api_errors.py).
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),
        # While PostgreSQL is down the pool retries a connection after 1, 2, 4, 8... s:
        # 64 s after a one-minute outage. Giving up after 4 s (the next request starts
        # again from 1 s) keeps the gap between its return and the first success at 2 s.
        "reconnect_timeout": 4.0,
        # ...and while requests wait for a connection, starts again at once (db_pool.py).
        "reconnect_failed": keep_reconnecting_while_requests_wait,
    }
    register_fork_hook()
TASKHUB_DB_POOL_MAX_CELERY = env_int("DB_POOL_MAX_CELERY", 2, minimum=1)

CACHES = {
    "default": {
        # django-redis wrapped by django-prometheus (django_cache_get_{hits,misses}_total).
        "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
        "LOCATION": TASKHUB_REDIS_URL,
        "KEY_PREFIX": "taskhub",
        "TIMEOUT": env_int("CACHE_TTL", 60, minimum=1),
        "OPTIONS": {
            # A Redis outage must cost a request a short wait, not hang it.
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
}

_REDIS_DB = redis.connection.parse_url(TASKHUB_REDIS_URL).get("db", 0)
CHANNEL_LAYERS = {
    "default": {
        # channels_redis' RedisPubSubChannelLayer, with the on_reconnect hook its README
        # documents and 4.3 never calls (notifications/layers.py). Pub/sub, not the list
        # layer (RedisChannelLayer): 15 ms delivery p50 at 5,000 sockets against 7.7 s
        # (docs/benchmarks.md). Nothing is queued in Redis, so the list layer's capacity,
        # expiry and group_expiry have no counterpart: a push reaches the sockets
        # subscribed at that moment or nobody (docs/architecture.md, "The event path").
        "BACKEND": "notifications.layers.PubSubChannelLayer",
        "CONFIG": {
            # socket_timeout stays finite here (redis-py 8's 5 s): the layer's reads pass
            # their own 0.1 s timeout, so an idle socket is not closed as with the list
            # layer's blocking BZPOPMIN (channels_redis#422); the timeout only bounds a
            # PUBLISH/SUBSCRIBE to a Redis that stopped answering, which would otherwise
            # hold the shard's lock, and every connect behind it, forever.
            # max_connections: the pool (one per shard per Daphne process) lends a
            # connection per in-flight publish; redis-py's default of 100 raises
            # MaxConnectionsError under a burst.
            "hosts": [
                {
                    "address": TASKHUB_REDIS_URL,
                    "socket_timeout": 5,
                    "socket_connect_timeout": 5,
                    "max_connections": env_int("CHANNEL_LAYER_MAX_CONNECTIONS", 1000, minimum=10),
                }
            ],
            # Redis pub/sub channels are not scoped by database number, the list layer's
            # keys were: stacks sharing a Redis server on different dbs (as the docs and
            # the test setup do) would hear each other's pushes without the db here.
            "prefix": env_str("CHANNEL_LAYER_PREFIX", f"taskhub:asgi:{_REDIS_DB}:"),
            # Every consumer of a process gets {"type": "layer.reconnected"} once the
            # layer re-subscribed after losing Redis: pushes in between were lost.
            "on_reconnect": "layer.reconnected",
        },
    }
}

# --- Auth -------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # simplejwt's, with the user row cached for REST_AUTH_CACHE_SECONDS per process
        # (taskhub/auth_jwt.py says how stale a deactivation can be, and where).
        "taskhub.auth_jwt.CachedJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "taskhub.pagination.CappedPageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # taskhub.exceptions' JSON errors, and 503 + Retry-After while PostgreSQL is down.
    "EXCEPTION_HANDLER": "taskhub.api_errors.api_exception_handler",
    # DRF's anon/user rules in one Redis round trip per request (taskhub/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": [
        "taskhub.throttling.AnonRateThrottle",
        "taskhub.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("THROTTLE_ANON", "600/min"),
        "user": env_rate("THROTTLE_USER", "6000/min"),
    },
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("JWT_ACCESS_MINUTES", 60, minimum=1)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("JWT_REFRESH_DAYS", 7, minimum=1)),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "TaskHub API",
    "DESCRIPTION": "Submit background tasks, follow them live, chat and search.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # From drf_spectacular_sidecar (INSTALLED_APPS), not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The API takes JSON (forms are parsed too, but no client should rely on them).
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # Request bodies get components of their own, so a field that refuses "" says
    # minLength 1 there (responses may still carry "").
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation's error answers (taskhub/openapi.py), so the schema tells the truth.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "taskhub.openapi.declare_error_responses",
        "schedules.api.openapi.describe_schedule_bodies",
    ],
}

# Request size limits: the API takes small JSON documents, never uploads.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 256 * 1024, minimum=1024)

# --- Celery (namespace CELERY_, read by taskhub/celery.py) ------------------------------

CELERY_BROKER_URL = TASKHUB_REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Results live in the Task row, never in a Celery result backend.
CELERY_TASK_IGNORE_RESULT = True
# send_task reads app.backend (the disabled one, holding no state) for its AsyncResult.
# Not thread-safe, Celery makes one per thread, and a web process runs each request on a
# new thread: every create that nudged the dispatcher built a backend (py-spy: a quarter
# of a nudge's CPU). Shared, it is made once per process.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Two queues: `celery` for run messages, `dispatch` for the dispatcher, the reaper and
# retention. `make run` and docker-compose give `dispatch` a one-process worker of its own,
# so the dispatcher keeps running (and queueing, and reaping) while every slot of the
# main worker is busy with long tasks. A worker started without -Q consumes both, which
# is all a development or test setup needs.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (Queue("celery"), Queue("dispatch"))
CELERY_TASK_ROUTES = {
    "tasks.dispatch_pending_tasks": {"queue": "dispatch"},
    "tasks.reap_stalled_tasks": {"queue": "dispatch"},
    "notifications.prune_old_events": {"queue": "dispatch"},
    "tasks.prune_idempotency_keys": {"queue": "dispatch"},
}
# A bound for housekeeping tasks; the runner sets its own limits from each task's timeout.
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90

# --- TaskHub ----------------------------------------------------------------------------

TASKHUB_DISPATCH_INTERVAL = env_float("DISPATCH_INTERVAL", 1.0, minimum=0.1)
TASKHUB_DISPATCH_BATCH_SIZE = env_int("DISPATCH_BATCH_SIZE", 200, minimum=1)
# A queued task whose run message has not started within this many seconds is re-sent.
TASKHUB_QUEUED_RESEND_AFTER = env_int("QUEUED_RESEND_AFTER", 60, minimum=1)
TASKHUB_REAPER_INTERVAL = env_float("REAPER_INTERVAL", 30.0, minimum=1.0)
# How long past its own deadline an in_progress task may go before the reaper ends it.
TASKHUB_REAPER_GRACE = env_int("REAPER_GRACE", 60, minimum=1)
TASKHUB_TASK_DEFAULT_TIMEOUT = env_int("TASK_DEFAULT_TIMEOUT", 240, minimum=1)
TASKHUB_TASK_MAX_TIMEOUT = env_int("TASK_MAX_TIMEOUT", 3600, minimum=1)
# Retry policy (docs/tasks.md, "Retries"): a task's max_attempts and retry_backoff come
# from its create, else its kind's processor, else these defaults. TASK_MAX_RETRY_BACKOFF
# bounds both a retry_backoff and any one wait between attempts (the exponential's cap).
# The maxima are the columns' (tasks.Task: max_attempts is a smallint): past them a create
# the limit allows would fail in the database, so the process refuses to start instead.
# A day is the longest wait between two attempts.
TASKHUB_TASK_DEFAULT_MAX_ATTEMPTS = env_int(
    "TASK_DEFAULT_MAX_ATTEMPTS", 1, minimum=1, maximum=32767
)
TASKHUB_TASK_MAX_ATTEMPTS = env_int("TASK_MAX_ATTEMPTS", 10, minimum=1, maximum=32767)
TASKHUB_TASK_DEFAULT_RETRY_BACKOFF = env_int(
    "TASK_DEFAULT_RETRY_BACKOFF", 10, minimum=0, maximum=86400
)
TASKHUB_TASK_MAX_RETRY_BACKOFF = env_int("TASK_MAX_RETRY_BACKOFF", 3600, minimum=0, maximum=86400)
# On SIGTERM a worker gives running processors this long to stop before it ends them.
TASKHUB_WORKER_SHUTDOWN_GRACE = env_float("WORKER_SHUTDOWN_GRACE", 10.0, minimum=0.0)
TASKHUB_PROGRESS_MIN_INTERVAL = env_float("PROGRESS_MIN_INTERVAL", 0.25, minimum=0.0)
TASKHUB_TASK_MAX_PARAMS_BYTES = env_int("TASK_MAX_PARAMS_BYTES", 16 * 1024, minimum=256)
# An Idempotency-Key on a create returns the first task for this long; an older key counts
# as unused, and the retention job deletes it (docs/api.md, "Idempotent creates").
TASKHUB_IDEMPOTENCY_KEY_HOURS = env_int("IDEMPOTENCY_KEY_HOURS", 24, minimum=1)
# Webhooks (docs/webhooks.md). WEBHOOK_ALLOW_PRIVATE=1 lets callback URLs reach loopback,
# private and link-local addresses: development and tests only, never a deployment (SSRF).
TASKHUB_WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
TASKHUB_WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 10.0, minimum=0.1)
# Retries: WEBHOOK_BACKOFF_BASE seconds doubled per attempt up to WEBHOOK_BACKOFF_MAX,
# jittered, until WEBHOOK_RETRY_WINDOW seconds after the delivery was created.
TASKHUB_WEBHOOK_BACKOFF_BASE = env_float("WEBHOOK_BACKOFF_BASE", 10.0, minimum=0.01)
TASKHUB_WEBHOOK_BACKOFF_MAX = env_float("WEBHOOK_BACKOFF_MAX", 3600.0, minimum=0.01)
TASKHUB_WEBHOOK_RETRY_WINDOW = env_int("WEBHOOK_RETRY_WINDOW", 24 * 3600, minimum=1)
# How often beat's sweep sends the due deliveries whose message was lost.
TASKHUB_WEBHOOK_SWEEP_INTERVAL = env_float("WEBHOOK_SWEEP_INTERVAL", 10.0, minimum=0.5)
# A processor's result is stored in the task row and sent in its task.updated event (to
# every socket of the owner, in the event log, in every cached read): a larger result
# fails the task with a message saying so, instead of slowing all of those down.
TASKHUB_TASK_MAX_RESULT_BYTES = env_int("TASK_MAX_RESULT_BYTES", 1024 * 1024, minimum=1024)
# Recurring tasks (docs/schedules.md): the shortest every_seconds, and how many schedules
# one user may have.
TASKHUB_SCHEDULE_MIN_INTERVAL_SECONDS = env_int("SCHEDULE_MIN_INTERVAL_SECONDS", 10, minimum=1)
TASKHUB_SCHEDULE_MAX_PER_USER = env_int("SCHEDULE_MAX_PER_USER", 100, minimum=1)
# kind -> dotted path of a processor; a deployment adds its own with TASK_PROCESSORS
# ("kind=package.module.function,kind2=...") without touching TaskHub's code.
TASKHUB_TASK_PROCESSORS = {
    "simulate": "tasks.processors.builtin.simulate",
    "echo": "tasks.processors.builtin.echo",
    "wordcount": "tasks.processors.builtin.wordcount",
    "flaky": "tasks.processors.builtin.flaky",
}
for _entry in env_list("TASK_PROCESSORS", []):
    _kind, _sep, _path = _entry.partition("=")
    if not _sep or not _kind.strip() or not _path.strip():
        raise ImproperlyConfigured(f"TASK_PROCESSORS entries are kind=dotted.path, got {_entry!r}")
    TASKHUB_TASK_PROCESSORS[_kind.strip()] = _path.strip()

TASKHUB_SERVER_VERSION = "1.0.0"
# This process's name in X-TaskHub-Server and the welcome frame (taskhub/instance.py);
# empty: host:pid.
TASKHUB_INSTANCE_NAME = env_str("INSTANCE_NAME")

# --- Chat -------------------------------------------------------------------------------

TASKHUB_CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 2000, minimum=1)
# A user's typing hints in one room: at most one per this many seconds, extras dropped.
TASKHUB_CHAT_TYPING_INTERVAL = env_float("CHAT_TYPING_INTERVAL", 2.0, minimum=0.0)
TASKHUB_EVENT_RETENTION_DAYS = env_int("EVENT_RETENTION_DAYS", 7, minimum=1)

# --- Search, metrics (docs/search.md, docs/metrics.md) ---------------------------------

# tasks/migrations/0002_task_search_vector.py builds the stored tsvector from exactly these
# text search configurations; SEARCH_CONFIGS may name any of them. Another language needs
# a new migration that rebuilds the column, then its name here.
TASKHUB_SEARCH_INDEXED_CONFIGS = ("english", "russian")
TASKHUB_SEARCH_CONFIGS = env_list("SEARCH_CONFIGS", ["english", "russian"])
if not TASKHUB_SEARCH_CONFIGS or not set(TASKHUB_SEARCH_CONFIGS) <= set(
    TASKHUB_SEARCH_INDEXED_CONFIGS
):
    raise ImproperlyConfigured(
        f"SEARCH_CONFIGS must name one or more of {', '.join(TASKHUB_SEARCH_INDEXED_CONFIGS)} (the "
        f"configurations the search column is built from), got {TASKHUB_SEARCH_CONFIGS!r}"
    )
TASKHUB_SEARCH_MAX_QUERY_CHARS = env_int("SEARCH_MAX_QUERY_CHARS", 200, minimum=1)

# /metrics: a Bearer token, source networks, or both (both must then pass). With neither
# set only loopback may scrape; a token alone opens it to any network.
TASKHUB_METRICS_TOKEN = env_str("METRICS_TOKEN")
TASKHUB_METRICS_ALLOWED_NETWORKS = env_list(
    "METRICS_ALLOWED_NETWORKS",
    ["0.0.0.0/0", "::/0"] if TASKHUB_METRICS_TOKEN else ["127.0.0.0/8", "::1/128"],
)
for _network in TASKHUB_METRICS_ALLOWED_NETWORKS:
    try:
        ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(
            f"METRICS_ALLOWED_NETWORKS entries are CIDRs like 10.0.0.0/8, got {_network!r}"
        ) from _exc
# prometheus_client's multiprocess mode (every process writes its counters to files here,
# /metrics adds them up) is on when PROMETHEUS_MULTIPROC_DIR is set in the environment of
# every process; the launcher sets it and empties the directory at start.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

# --- gRPC (manage.py grpcserver, docs/grpc.md) -----------------------------------------

TASKHUB_GRPC_PORT = env_int("GRPC_PORT", 50051, minimum=1)
# Like the web server, gRPC listens on loopback unless told otherwise: GRPC_HOST, else
# HOST, else 127.0.0.1. Set GRPC_HOST=0.0.0.0 (or [::]) to serve other machines.
TASKHUB_GRPC_HOST = env_str("GRPC_HOST") or env_str("HOST") or "127.0.0.1"
# Each RPC holds a thread for its whole life, a WatchTasks stream included, so this is
# also the cap on concurrent watchers plus in-flight unary calls.
TASKHUB_GRPC_MAX_WORKERS = env_int("GRPC_MAX_WORKERS", 32, minimum=2)

# --- WebSocket (notifications.consumers; every cap is documented in docs/protocol.md) -----

# A client frame larger than this closes the socket with 4400.
TASKHUB_WS_MAX_FRAME_BYTES = env_int("WS_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
# Token bucket per connection (the burst is the same number); past it: close 4429.
TASKHUB_WS_MAX_MESSAGES_PER_SECOND = env_float("WS_MAX_MESSAGES_PER_SECOND", 20.0, minimum=1.0)
# Open sockets one user may hold at once (counted in Redis, across instances): 4429 past it.
TASKHUB_WS_MAX_CONNECTIONS_PER_USER = env_int("WS_MAX_CONNECTIONS_PER_USER", 20, minimum=1)
# A client that sends nothing (not even a ping) for this many seconds is closed with 4408.
TASKHUB_WS_IDLE_TIMEOUT = env_float("WS_IDLE_TIMEOUT", 120.0, minimum=1.0)
# Malformed/unknown frames tolerated per connection (each answered with an error) before 4400.
TASKHUB_WS_MAX_BAD_FRAMES = env_int("WS_MAX_BAD_FRAMES", 10, minimum=1)
# How often each web process sweeps its open sockets, in one query for all their users,
# for a push that never arrived when no later event exposed the gap (a push lost to a
# Redis blip: delivered within 2 periods) and for deactivated users (closed with 4401);
# 0 turns the sweep off.
TASKHUB_WS_CATCHUP_INTERVAL = env_float("WS_CATCHUP_INTERVAL", 30.0, minimum=0.0)
# How often a socket renews its entry in the Redis connection registry; an entry not
# renewed for 3 periods (a crashed server) no longer counts.
TASKHUB_WS_PRESENCE_REFRESH = env_float("WS_PRESENCE_REFRESH", 60.0, minimum=1.0)
# A valid token's user is looked up once and trusted for this many seconds per process
# (a connect storm costs no query per socket): a deactivated user's new sockets are
# refused at most this long after, and their open ones closed by the next sweep.
TASKHUB_WS_AUTH_CACHE_SECONDS = env_float("WS_AUTH_CACHE_SECONDS", 30.0, minimum=0.0)
# Freeze open sockets' objects out of the cyclic collector's full passes, which otherwise
# stop a web process for ~1 s every 10-15 s at 5,000 sockets (taskhub/gc_policy.py).
TASKHUB_WS_GC_FREEZE = env_bool("WS_GC_FREEZE", True)
# ...while at least this many sockets are open in the process (below, its passes are short).
TASKHUB_WS_GC_FREEZE_MIN_SOCKETS = env_int("WS_GC_FREEZE_MIN_SOCKETS", 500, minimum=1)
# How long one process trusts a REST token's user row (taskhub/auth_jwt.py); 0: no cache.
TASKHUB_REST_AUTH_CACHE_SECONDS = env_float("REST_AUTH_CACHE_SECONDS", 5.0, minimum=0.0)
# The sockets' own small pool of async PostgreSQL connections per web process
# (notifications.selectors): its size, how long a read waits for a free connection, and
# how long a read may take in all (that wait, retries on dead connections and a connect).
TASKHUB_WS_DB_POOL_SIZE = env_int("WS_DB_POOL_SIZE", 4, minimum=1)
TASKHUB_WS_DB_POOL_TIMEOUT = env_float("WS_DB_POOL_TIMEOUT", 5.0, minimum=0.1)
TASKHUB_WS_DB_READ_TIMEOUT = env_float("WS_DB_READ_TIMEOUT", 10.0, minimum=0.1)

# --- Static files, i18n ------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# In development ServeStatic serves straight from the apps' static/ folders; in production
# from STATIC_ROOT, filled by collectstatic (`make run` and the Dockerfile run it).
SERVESTATIC_USE_FINDERS = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Production hardening (manage.py check --deploy passes when these are set) ---------

# How many reverse proxies stand in front of the web process (nginx: 1). Only then are the
# X-Forwarded-* headers trusted: DRF's throttles take the client address from the
# X-Forwarded-For entry the nearest proxy wrote (deploy/nginx/proxy.conf overwrites it with
# the address it saw), and https from X-Forwarded-Proto. With 0, a client that sent those
# headers itself could dodge the rate limits or claim https.
_NUM_PROXIES = env_int("NUM_PROXIES", 0, minimum=0)
REST_FRAMEWORK["NUM_PROXIES"] = _NUM_PROXIES
if _NUM_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # Redacted: no token (query string, JWT, Bearer) reaches a log, whatever logs it
        # (taskhub/redaction.py; Daphne's access log is redacted in taskhub/daphne_server.py).
        # So this is the only handler: no logger below keeps one of its own, and Celery
        # configures no logging (taskhub/celery.py).
        "plain": {
            "()": "taskhub.redaction.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "filters": {
        "drop_routine_ticks": {"()": "taskhub.log_filters.DropRoutineTicks"},
        # Libraries that log a traceback per failure while Redis is away: one outage line
        # per process instead (taskhub/log_filters.py, docs/running.md).
        "redis_outage_pushes": {
            "()": "taskhub.log_filters.RedisOutageOneLine",
            "consequence": "pushes to this process's sockets are lost; they catch up from "
            "the event log once it is back",
        },
        "redis_outage_no_traceback": {"()": "taskhub.log_filters.RedisOutageWithoutTraceback"},
        # psycopg_pool logs each failed connection attempt: one outage line instead.
        "database_outage_pool": {"()": "taskhub.log_filters.DatabaseOutageOneLine"},
        "redis_outage_beat": {
            "()": "taskhub.log_filters.RedisOutageOneLine",
            "consequence": "beat's ticks are not sent; the dispatcher catches up on the "
            "first one after it is back",
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own defaults (DEFAULT_LOGGING) give these handlers of their own that do not
        # redact: a console handler under DEBUG, mail to ADMINS, runserver's line format.
        # Named here, they lose them and go through the root's redacting handler instead.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        # billiard (Celery's pool) logs here and sets propagate off itself; Celery gave it an
        # unredacted handler at ERROR, which taskhub/celery.py's setup_logging receiver
        # now keeps it from doing.
        "multiprocessing": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        # redis-py (RESP3) gives this logger a plain stdout handler of its own the first time
        # a client handles a push reply, unless the logger exists already: named here, it
        # exists, and its lines go through the root's redacting handler.
        "push_response": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # httpx logs each webhook POST's URL at INFO, as connected: the address, the path
        # and any query (a receiver's token, often). webhooks.services logs each attempt
        # itself, by delivery id.
        "httpx": {"level": "WARNING"},
        # The dispatcher ticks every second: see DropRoutineTicks.
        "celery.app.trace": {"filters": ["drop_routine_ticks"]},
        "celery.worker.strategy": {"filters": ["drop_routine_ticks"]},
        "celery.beat": {"filters": ["drop_routine_ticks", "redis_outage_beat"]},
        "channels_redis.pubsub": {"filters": ["redis_outage_pushes"]},
        "celery.worker.request": {"filters": ["redis_outage_no_traceback"]},
        "psycopg.pool": {"filters": ["database_outage_pool"]},
    },
}
