"""The operators' view: /admin/operations/ (docs/operations.md, "The operators' view").

Staff only, in the admin (where operators already sign in): workers online, queue depths,
tasks by status, dispatcher lag, throughput and processing time, and the actions cancel,
retry and drain. Seeing is staff's; acting takes a permission too: cancel and retry the
admin's own change permission on tasks (tasks.change_task), drain tasks.drain_worker
(a superuser has both), answered 403 otherwise. Thin views: the reads are
tasks/workers.py (Celery) and tasks/ops_selectors.py / tasks/selectors.py (PostgreSQL);
cancel and retry are tasks/services.py's.

Live by polling, not the WebSocket: the page asks /admin/operations/data.json every few
seconds. The socket delivers one user's event log with resume and gap rules
(docs/architecture.md, "The event path"); a staff-wide feed of worker state would need a
new group and a process broadcasting into it whether anyone watches or not. A poll of a
cached answer costs a cache read, needs only the admin's session, and recovers from any
outage by itself at the next tick.

Every viewer shares one cached answer per figure, refreshed at most every few seconds
(tasks/workers.py, "shared"); /metrics reads the same answers (taskhub/metrics.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from taskhub.exceptions import ConflictError
from taskhub.outages import REDIS, is_database_outage, is_redis_outage

logger = logging.getLogger(__name__)

# How often the page polls (ms, in its bootstrap data) and how long the history figures
# (PostgreSQL) are shared; the workers' and queues' are in tasks/workers.py.
POLL_INTERVAL_MS = 3000
HISTORY_CACHE_SECONDS = 5


# --- The shared figures -------------------------------------------------------------------


def forget_cached(*names: str) -> None:
    """Drop shared figures ("workers", "queues", "history") so the next read is fresh."""
    from tasks import workers

    workers.forget_shared(*names)


def _history() -> dict[str, Any]:
    from tasks import ops_selectors, selectors

    activity = ops_selectors.task_activity_per_minute()
    return {
        "by_status": selectors.task_counts_by_status(),
        "dispatcher_lag_seconds": round(selectors.dispatcher_lag_seconds(), 3),
        "activity": activity,
        "rates": ops_selectors.task_rates_per_minute(activity),
        "processing_by_kind": ops_selectors.task_processing_percentiles_by_kind(),
        "recently_unsuccessful": ops_selectors.tasks_recently_unsuccessful(),
        "outcomes_by_worker": ops_selectors.task_outcomes_by_worker(),
    }


def history() -> dict[str, Any]:
    from tasks import workers

    return workers.shared("history", HISTORY_CACHE_SECONDS, _history)


def _described(exc: Exception, source: str) -> str:
    if is_redis_outage(exc):
        REDIS.failed(exc, "the operators' view shows the broker unreachable")
        return f"{source} unreachable: {exc}"
    if is_database_outage(exc):
        return f"{source} unreachable: {exc}"
    logger.warning("operators' view: %s could not be read", source, exc_info=True)
    return f"{source} could not be read: {exc}"


def operations_snapshot() -> dict[str, Any]:
    """Everything the page shows, as JSON; a source that cannot be read is named in
    `errors` and its figures are null, so one outage never blanks the rest."""
    from tasks import ops_selectors

    snapshot: dict[str, Any] = {"errors": {}, "now": time.time()}
    from tasks.workers import queue_depths, workers_online

    try:
        workers = workers_online()
    except Exception as exc:
        workers = None
        snapshot["errors"]["workers"] = _described(exc, "the broker (inspect)")
    try:
        snapshot["queues"] = queue_depths()
    except Exception as exc:
        snapshot["queues"] = None
        snapshot["errors"]["queues"] = _described(exc, "the broker (queue lengths)")
    try:
        snapshot.update(history())
    except Exception as exc:
        snapshot["errors"]["database"] = _described(exc, "the database")
    if workers is not None:
        try:
            # Not cached with the workers: a title or status changes more often.
            summaries = ops_selectors.task_summaries(
                task_ids=[run["task_id"] for worker in workers for run in worker["active"]]
            )
        except Exception as exc:
            summaries = {}
            snapshot["errors"]["database"] = _described(exc, "the database")
        outcomes = snapshot.get("outcomes_by_worker") or {}
        workers = [
            {
                **worker,
                # Seconds since it last answered an inspect: at most the cache's life
                # while it is alive; a worker that stops answering leaves the list.
                "heartbeat_age": round(max(0.0, snapshot["now"] - worker["answered_at"]), 1),
                # Kept in PostgreSQL: survives the worker's restart, unlike `processed`.
                "last_hour": outcomes.get(worker["name"], {}),
                "active": [
                    {**run, **summaries.get(run["task_id"] or "", {})} for run in worker["active"]
                ],
            }
            for worker in workers
        ]
    snapshot["workers"] = workers
    return snapshot


# --- Views (admin.site.admin_view: staff only, the admin's login, never cached) ----------


@require_GET
def operations_page(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "bootstrap": {"poll_interval_ms": POLL_INTERVAL_MS},
    }
    return render(request, "admin/operations.html", context)


@require_GET
def operations_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(operations_snapshot())


def _task_action(request: HttpRequest, task_id: UUID, act: Callable[..., Any]) -> JsonResponse:
    from tasks import ops_selectors

    task = ops_selectors.task_get_for_staff(task_id=task_id)
    if task is None:
        return JsonResponse({"detail": "No such task."}, status=404)
    try:
        task = act(task=task)
    except ConflictError as exc:
        return JsonResponse({"detail": str(exc)}, status=409)
    forget_cached("workers", "history")
    return JsonResponse({"id": str(task.pk), "status": task.status, "detail": _said(task)})


def _said(task: Any) -> str:
    if task.status == "in_progress" and task.stop_requested:
        return "cancel requested; it stops at its next checkpoint"
    return task.status


def _permitted(permission: str, what: str) -> Callable[[Callable[..., JsonResponse]], Callable]:
    """403 JSON unless the signed-in staff member has `permission`: is_staff lets one look
    (and reach the admin), not stop anyone's work."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @functools.wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if not request.user.has_perm(permission):
                detail = f"You may not {what} (it takes the {permission} permission)."
                return JsonResponse({"detail": detail}, status=403)
            return view(request, *args, **kwargs)

        return checked

    return decorate


@require_POST
@_permitted("tasks.change_task", "cancel tasks")
def task_cancel(request: HttpRequest, task_id: UUID) -> JsonResponse:
    from tasks import services

    return _task_action(request, task_id, services.task_cancel)


@require_POST
@_permitted("tasks.change_task", "retry tasks")
def task_retry(request: HttpRequest, task_id: UUID) -> JsonResponse:
    from tasks import services

    return _task_action(request, task_id, services.task_retry)


@require_POST
@_permitted("tasks.drain_worker", "drain workers")
def worker_drain(request: HttpRequest) -> JsonResponse:
    """Stop the named worker consuming every queue it consumes now; it finishes what it
    runs (docs/operations.md, "Draining a worker")."""
    from tasks import workers

    name = request.POST.get("worker", "")
    # Fresh, not shared: the queues it consumes now.
    known = {worker["name"]: worker for worker in workers.inspect_workers()}
    if name not in known:
        return JsonResponse({"detail": f"No worker {name!r} answers."}, status=404)
    queues = known[name]["queues"] or []
    replies = workers.worker_drain(worker=name, queues=queues)
    forget_cached("workers")
    return JsonResponse({"worker": name, "queues": queues, "replies": replies})


def _staff(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    return admin.site.admin_view(view)


# Included at admin/operations/ by taskhub/urls.py, before the admin's own URLs.
urlpatterns = [
    path("", _staff(operations_page), name="operations"),
    path("data.json", _staff(operations_data), name="operations-data"),
    path("tasks/<uuid:task_id>/cancel", _staff(task_cancel), name="operations-task-cancel"),
    path("tasks/<uuid:task_id>/retry", _staff(task_retry), name="operations-task-retry"),
    path("workers/drain", _staff(worker_drain), name="operations-worker-drain"),
]

# The admin's index links the page: the site's index template is ours, which extends
# Django's (the admin app comes before ours in INSTALLED_APPS, so a template of the same
# name here would never be found).
admin.site.index_template = "admin/taskhub_index.html"
