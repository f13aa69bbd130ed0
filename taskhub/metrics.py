"""TaskHub's own Prometheus metrics (prefix taskhub_) and the /metrics view (docs/metrics.md).

Two kinds of figure, so that every process tells the same truth:

- Counters and histograms (tasks created/finished, processing seconds, events, cache hits)
  are incremented by whichever process does the work: the web, a Celery worker's pool
  child, beat's dispatcher. With PROMETHEUS_MULTIPROC_DIR set (the launcher sets it for
  every process and empties it at start) prometheus_client keeps them in per-process
  files there, and /metrics sums the files, whichever web process answers. Without it
  each process has its own registry and /metrics shows only the serving process's share.
- Gauges of the current state (tasks by status, dispatcher lag, WebSocket connections)
  are read from PostgreSQL and Redis at scrape time, so they are global by construction.

This module imports nothing of tasks or notifications at import time (both import it).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import cache

import prometheus_client
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskhub.outages import DATABASE, REDIS, is_database_outage, is_redis_outage

logger = logging.getLogger(__name__)

# The per-series `_created` timestamps are not exported in multiprocess mode; dropping them
# everywhere keeps the single-process output the same shape.
prometheus_client.disable_created_metrics()

# --- Counted where the work happens (multiprocess-safe) ---------------------------------

TASKS_CREATED = Counter("taskhub_tasks_created", "Tasks created, by kind.", ["kind"])
TASKS_FINISHED = Counter(
    "taskhub_tasks_finished",
    "Task attempts that ended, by kind and outcome (completed, failed, cancelled).",
    ["kind", "outcome"],
)
TASK_PROCESSING_SECONDS = Histogram(
    "taskhub_task_processing_seconds",
    "Seconds from in_progress to the end of an attempt, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 240, 600, 1800, 3600, float("inf")),
)
EVENTS_PUBLISHED = Counter(
    "taskhub_events_published",
    "Persisted events committed to the event log (and pushed), by type.",
    ["type"],
)
# Incremented by the WebSocket consumer for each persisted event it sends to a socket (a
# user with two tabs counts twice; a replay on resume counts again).
EVENTS_DELIVERED = Counter(
    "taskhub_events_delivered",
    "Persisted event frames sent to WebSocket clients, by type.",
    ["type"],
)
CACHE_HITS = Counter("taskhub_cache_hits", "Reads answered from the cache, by cache.", ["cache"])
CACHE_MISSES = Counter(
    "taskhub_cache_misses", "Reads that went to the database, by cache.", ["cache"]
)


def task_change_observed(
    *,
    kind: str,
    created: bool,
    outcome: str | None,
    started_at: datetime | None,
    finished_at: datetime | None,
) -> None:
    """Count one committed task change (tasks.change_hooks calls it after commit).
    `outcome` is the terminal status the attempt ended in, or None."""
    if created:
        TASKS_CREATED.labels(kind=kind).inc()
    if outcome is None:
        return
    TASKS_FINISHED.labels(kind=kind, outcome=outcome).inc()
    # A task cancelled before it ran has no processing time to report.
    if started_at is not None and finished_at is not None:
        seconds = max(0.0, (finished_at - started_at).total_seconds())
        TASK_PROCESSING_SECONDS.labels(kind=kind, outcome=outcome).observe(seconds)


# --- Read at scrape time -----------------------------------------------------------------


class TaskHubStateCollector(Collector):
    """Gauges of the current state, from PostgreSQL and Redis, computed per scrape."""

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Registration must not query the database.
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "taskhub_metrics_source_up",
            "1 if this scrape could read the source of the taskhub_ gauges, else 0.",
            labels=["source"],
        )
        try:
            by_status, lag = _database_state()
        except Exception as exc:
            # Down: one line per outage (taskhub/outages.py), not a traceback per scrape.
            if is_database_outage(exc):
                DATABASE.failed(exc, "scrapes report taskhub_metrics_source_up 0")
            else:
                logger.warning("metrics: the database could not be read", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            tasks = GaugeMetricFamily(
                "taskhub_tasks", "Tasks by status, now (from the database).", labels=["status"]
            )
            for status, count in by_status.items():
                tasks.add_metric([status], count)
            yield tasks
            yield GaugeMetricFamily(
                "taskhub_dispatcher_lag_seconds",
                "Age of the oldest due pending task: how long it has waited to be queued "
                "(0 if none is waiting).",
                value=lag,
            )
        try:
            connections = active_connection_count()
        except Exception as exc:
            if is_redis_outage(exc):
                REDIS.failed(exc, "scrapes report taskhub_metrics_source_up 0")
            else:
                logger.warning(
                    "metrics: the WebSocket connection count is unavailable", exc_info=True
                )
            up.add_metric(["redis"], 0)
        else:
            up.add_metric(["redis"], 1)
            yield GaugeMetricFamily(
                "taskhub_websocket_connections",
                "Open WebSocket connections across all web instances.",
                value=connections,
            )
        yield up


def _database_state() -> tuple[dict[str, int], float]:
    from tasks import selectors

    return selectors.task_counts_by_status(), selectors.dispatcher_lag_seconds()


def active_connection_count() -> int:
    """Open WebSocket connections, as the consumer counts them in Redis (a sorted set of
    live sockets, taskhub:ws:connections, kept by notifications)."""
    from notifications.selectors import active_connection_count as from_notifications

    return int(from_notifications())


class OperationsCollector(Collector):
    """Workers online and queue depths, the operators' view's figures (taskhub/ops.py,
    tasks/workers.py).

    Computed at scrape time through the view's short shared cache, so a scrape adds no
    inspect broadcast while the page is open, and one (taking tasks.workers'
    INSPECT_TIMEOUT) otherwise. Both come from the broker: when it cannot be read the
    gauges are left out (taskhub_metrics_source_up{source="redis"} says why, the broker
    being that Redis) and the scrape still answers."""

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from tasks import workers as celery_workers

        try:
            workers = celery_workers.workers_online()
        except Exception as exc:
            _operations_unavailable(exc, "workers online")
        else:
            yield GaugeMetricFamily(
                "taskhub_workers_online",
                "Celery workers that answered an inspect broadcast (any queue).",
                value=len(workers),
            )
        try:
            depths = celery_workers.queue_depths()
        except Exception as exc:
            _operations_unavailable(exc, "queue depths")
        else:
            depth = GaugeMetricFamily(
                "taskhub_queue_depth",
                "Messages waiting in each Celery queue of the broker, not yet taken by a worker.",
                labels=["queue"],
            )
            for queue, count in depths.items():
                depth.add_metric([queue], count)
            yield depth


def _operations_unavailable(exc: Exception, what: str) -> None:
    if is_redis_outage(exc):
        REDIS.failed(exc, f"scrapes leave out {what}")
    else:
        logger.warning("metrics: %s could not be read", what, exc_info=True)


class _ProcessRegistry(Collector):
    """This process's default registry as one collector of the scrape registry."""

    def collect(self) -> Iterable[prometheus_client.Metric]:
        return prometheus_client.REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: every process's counters (multiprocess mode) or this
    process's (otherwise), plus the state gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(TaskHubStateCollector())
    registry.register(OperationsCollector())
    return registry


# --- The view ----------------------------------------------------------------------------


@cache
def _allowed_networks(
    networks: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def _client_allowed(request: HttpRequest) -> bool:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client says. Behind a proxy, run
    # Daphne with --proxy-headers so REMOTE_ADDR is the real client, or use the token.
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    networks = _allowed_networks(tuple(settings.TASKHUB_METRICS_ALLOWED_NETWORKS))
    return any(address in network for network in networks if address.version == network.version)


def _token_valid(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), settings.TASKHUB_METRICS_TOKEN.encode())


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _client_allowed(request):
        return JsonResponse({"detail": "Metrics are not served to this address."}, status=403)
    if settings.TASKHUB_METRICS_TOKEN and not _token_valid(request):
        response = JsonResponse({"detail": "A valid Bearer token is required."}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = prometheus_client.generate_latest(scrape_registry())
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)
