"""The original Go service's two endpoints, byte for byte.

Go's encoding/json wrote compact JSON followed by a newline, with the struct's field
names as keys; clients of the old service parse exactly that, so it is rebuilt here by
hand instead of through DRF's renderer.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from tasks import selectors, services
from tasks.models import Task, TaskStatus

LEGACY_STATUS = {
    TaskStatus.PENDING: "in progress",
    TaskStatus.QUEUED: "in progress",
    TaskStatus.IN_PROGRESS: "in progress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}
MAX_LEGACY_TASK_CHARS = 10000


def _go_json(payload: dict[str, Any], status: int = 200) -> HttpResponse:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"
    return HttpResponse(body, status=status, content_type="application/json")


def _error(message: str, status: int) -> HttpResponse:
    return _go_json({"error": message}, status=status)


def _method_not_allowed(allowed: str) -> HttpResponse:
    response = _error(f"method not allowed; use {allowed}", 405)
    response["Allow"] = allowed
    return response


def _go_time(task: Task) -> str:
    # Go marshals time.Time as RFC 3339 with nanoseconds, trailing zeros trimmed.
    text = task.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def _legacy_result(task: Task) -> str:
    if task.status == TaskStatus.COMPLETED:
        result = task.result
        return result if isinstance(result, str) else json.dumps(result, separators=(",", ":"))
    if task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        return task.error
    return ""


@csrf_exempt
def legacy_task_create(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    try:
        payload = json.loads(request.body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error('request body must be JSON like {"task": "..."}', 400)
    text = payload.get("task") if isinstance(payload, dict) else None
    if not isinstance(text, str) or not text.strip():
        return _error('field "task" must be a non-empty string', 400)
    if len(text) > MAX_LEGACY_TASK_CHARS:
        return _error(f'field "task" must be at most {MAX_LEGACY_TASK_CHARS} characters', 400)
    try:
        task = services.task_create(owner=None, title=text[:200], description=text)
    except ValidationError as exc:
        return _error("; ".join(exc.messages), 400)
    return _go_json({"task_id": str(task.pk), "status": "success"})


def legacy_task_check_result(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed("GET")
    task_id = request.GET.get("task_id", "")
    if not task_id:
        return _error("query parameter task_id is required", 400)
    try:
        task = selectors.task_get_anonymous(task_id=task_id)
    except ValidationError:
        task = None
    if task is None:
        return _error("task not found", 404)
    return _go_json(
        {
            "Task": task.description or task.title,
            "CreatedAt": _go_time(task),
            "Task_identification": str(task.pk),
            "Result": _legacy_result(task),
            "Status": LEGACY_STATUS[task.status],
        }
    )
