"""TaskHub settings, read from the environment (see the README's settings table)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from taskhub.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

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
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework_simplejwt",
    "drf_spectacular",
    "django_prometheus",
    "channels",
    "tasks",
    "notifications",
    "search",
    "chat",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

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

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/taskhub")
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        # Persistent connections are per thread; under ASGI each request may run in a new
        # thread, so the default is 0 (Django's advice for async servers). Workers may raise it.
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...)")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "taskhub",
        "TIMEOUT": env_int("CACHE_TTL", 60, minimum=1),
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # socket_timeout=None: with redis-py 8 the default read timeout closes idle
            # WebSockets after ~5 s (channels_redis#422).
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            # The stock capacity (100) silently drops group messages under load.
            "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1500, minimum=100),
            "expiry": 60,
            "group_expiry": 86400,
            "prefix": "taskhub:asgi",
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
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "taskhub.pagination.CappedPageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "taskhub.exceptions.json_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("THROTTLE_ANON", "600/min"),
        "user": env_str("THROTTLE_USER", "6000/min"),
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
}

# Request size limits: the API takes small JSON documents, never uploads.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 256 * 1024, minimum=1024)

# --- Celery (namespace CELERY_, read by taskhub/celery.py) ------------------------------

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Results live in the Task row, never in a Celery result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
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
TASKHUB_DEFAULT_TIMEOUT = env_int("TASK_DEFAULT_TIMEOUT", 240, minimum=1)
TASKHUB_MAX_TIMEOUT = env_int("TASK_MAX_TIMEOUT", 3600, minimum=1)
# On SIGTERM a worker gives running processors this long to stop before it ends them.
TASKHUB_SHUTDOWN_GRACE = env_float("WORKER_SHUTDOWN_GRACE", 10.0, minimum=0.0)
TASKHUB_PROGRESS_MIN_INTERVAL = env_float("PROGRESS_MIN_INTERVAL", 0.25, minimum=0.0)
TASKHUB_MAX_PARAMS_BYTES = env_int("TASK_MAX_PARAMS_BYTES", 16 * 1024, minimum=256)
# kind -> dotted path of a processor; a deployment adds its own with TASK_PROCESSORS
# ("kind=package.module.function,kind2=...") without touching TaskHub's code.
TASKHUB_PROCESSORS = {
    "simulate": "tasks.processors.builtin.simulate",
    "echo": "tasks.processors.builtin.echo",
    "wordcount": "tasks.processors.builtin.wordcount",
}
for _entry in env_list("TASK_PROCESSORS", []):
    _kind, _sep, _path = _entry.partition("=")
    if not _sep or not _kind.strip() or not _path.strip():
        raise ImproperlyConfigured(f"TASK_PROCESSORS entries are kind=dotted.path, got {_entry!r}")
    TASKHUB_PROCESSORS[_kind.strip()] = _path.strip()

TASKHUB_SERVER_VERSION = "1.0.0"
TASKHUB_EVENT_RETENTION_DAYS = env_int("EVENT_RETENTION_DAYS", 7, minimum=1)

# --- Static files, i18n ------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# In development whitenoise serves straight from the apps' static/ folders.
WHITENOISE_USE_FINDERS = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Production hardening (manage.py check --deploy passes when these are set) ---------

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
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}
