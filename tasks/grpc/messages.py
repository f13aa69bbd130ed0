"""Conversions between protobuf messages and TaskHub's rows and events (the gRPC
counterpart of tasks/api/serializers.py), and the opaque ListTasks page token."""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from notifications.models import Event
from tasks.grpc.errors import invalid_argument
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.models import Task, TaskStatus

TASK_TIMESTAMPS = ("run_at", "created_at", "updated_at", "queued_at", "started_at", "finished_at")

_STATUS_TO_PROTO = {
    status.value: pb.TaskStatus.Value(f"TASK_STATUS_{status.name}") for status in TaskStatus
}
_STATUS_FROM_PROTO = {number: status for status, number in _STATUS_TO_PROTO.items()}


def status_to_proto(status: str | None) -> int:
    return _STATUS_TO_PROTO.get(status or "", pb.TASK_STATUS_UNSPECIFIED)


def status_from_proto(number: int, *, field: str) -> str | None:
    """The TaskStatus value for an enum number; None for UNSPECIFIED (no filter)."""
    if number == pb.TASK_STATUS_UNSPECIFIED:
        return None
    if number not in _STATUS_FROM_PROTO:  # proto3 enums are open: any int32 can arrive
        raise invalid_argument({field: [f"Unknown status {number}."]})
    return _STATUS_FROM_PROTO[number]


# --- JSON values -------------------------------------------------------------------------


def _integral_floats_to_int(value: Any) -> Any:
    """Struct/Value carry every number as a double; give back the integers a JSON client
    would have sent (5, not 5.0), so a task made over gRPC stores what REST would store."""
    if (
        isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
        and abs(value) < 2**53
    ):
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_to_int(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(item) for item in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return _integral_floats_to_int(json_format.MessageToDict(struct))


def json_to_value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def timestamp_to_datetime(timestamp: timestamp_pb2.Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


# --- Tasks and events --------------------------------------------------------------------


def task_to_proto(task: Task) -> pb.Task:
    message = pb.Task(
        id=str(task.id),
        title=task.title,
        description=task.description,
        kind=task.kind,
        status=status_to_proto(task.status),
        progress=task.progress,
        error=task.error,
        timeout=task.timeout,
        callback_url=task.callback_url,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        retry_backoff=task.retry_backoff,
    )
    message.params.CopyFrom(json_format.ParseDict(task.params or {}, struct_pb2.Struct()))
    if task.result is not None:
        message.result.CopyFrom(json_to_value(task.result))
    for name in TASK_TIMESTAMPS:
        moment = getattr(task, name)
        if moment is not None:
            getattr(message, name).FromDatetime(moment)
    return message


def task_event_to_proto(event: Event) -> pb.TaskEvent:
    """A persisted `task.updated` event (its data is tasks.services.task_event_data()) or
    `task.deleted` (task_id, title and the status it had: the rest stays unset)."""
    data = event.data
    update = pb.TaskUpdate(
        task_id=data.get("task_id", ""),
        status=status_to_proto(data.get("status")),
        previous_status=status_to_proto(data.get("previous_status")),
        title=data.get("title", ""),
        kind=data.get("kind", ""),
        progress=int(data.get("progress") or 0),
        attempts=int(data.get("attempts") or 0),
        error=data.get("error") or "",
        max_attempts=int(data.get("max_attempts") or 0),
        params_changed=bool(data.get("params_changed")),
    )
    if data.get("updated_at"):
        update.updated_at.FromJsonString(data["updated_at"])
    retry = data.get("retry")
    if isinstance(retry, dict):
        update.retry.in_seconds = float(retry.get("in_seconds") or 0)
        update.retry.attempt = int(retry.get("attempt") or 0)
        update.retry.of = int(retry.get("of") or 0)
        update.retry.error = retry.get("error") or ""
        if retry.get("run_at"):
            update.retry.run_at.FromJsonString(retry["run_at"])
    if data.get("result") is not None:
        update.result.CopyFrom(json_to_value(data["result"]))
    message = pb.TaskEvent(id=event.seq, type=event.type, task=update)
    message.ts.FromDatetime(event.created_at)
    return message


# --- ListTasks paging --------------------------------------------------------------------
# Keyset paging on the selector's own order (-created_at, -id): a page boundary is "older
# than the last row shown", so tasks created while a client pages never shift or repeat
# rows, which OFFSET paging would do. The token also pins the filters it was made with.


def page_token_encode(*, last: Task, filters: dict[str, str | None]) -> str:
    payload = {"c": last.created_at.isoformat(), "i": str(last.id), "f": filters}
    return base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True).encode()).decode()


def page_after(
    tasks: QuerySet[Task], *, token: str, filters: dict[str, str | None]
) -> QuerySet[Task]:
    """`tasks` (ordered -created_at, -id) after the row a page token points at."""
    if not token:
        return tasks
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        created_at = datetime.fromisoformat(payload["c"])
        last_id = UUID(payload["i"])
        token_filters = payload["f"]
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeError):
        raise invalid_argument({"page_token": ["Invalid page token."]}) from None
    if token_filters != filters:
        raise invalid_argument(
            {"page_token": ["The page token was made with other filters; keep them while paging."]}
        )
    return tasks.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=last_id))
