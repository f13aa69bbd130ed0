"""The gRPC TaskService servicer and the server that hosts it (`manage.py grpcserver`).

The servicer is an adapter like the REST views: authenticate, validate the request, call
one selector or service, convert the result. Errors from below become status codes in
tasks.grpc.errors. Besides TaskService the server carries the standard health service and
server reflection, so grpcurl, grpc_health_probe and Kubernetes probes work unchanged.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import grpc
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import close_old_connections
from django.http import Http404
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from notifications import selectors as event_log
from taskhub.pagination import CappedPageNumberPagination
from tasks import selectors, services
from tasks.api.serializers import TaskCreateInputSerializer
from tasks.grpc import messages
from tasks.grpc.auth import authenticate
from tasks.grpc.errors import RpcAbort, abort, invalid_argument, to_rpc_abort
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.models import Task

logger = logging.getLogger("tasks.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskService"].full_name  # taskhub.v1.TaskService
LAST_EVENT_ID_METADATA = "taskhub-last-event-id"
# Trailing metadata of a CreateTask answered with an earlier call's task (idempotency_key).
IDEMPOTENT_REPLAYED_METADATA = "idempotent-replayed"
# WatchTasks polls the event log this often for events after the last one it sent. See
# TaskServicer.WatchTasks for why polling rather than the Channels group.
WATCH_POLL_SECONDS = 0.2
WATCH_BATCH_SIZE = 500
DEFAULT_PAGE_SIZE = settings.REST_FRAMEWORK["PAGE_SIZE"]
MAX_PAGE_SIZE = CappedPageNumberPagination.max_page_size

Response = TypeVar("Response")


# --- Per-call plumbing -------------------------------------------------------------------
# grpc runs each call in a thread of the server's pool, and Django's DB connections are per
# thread: like Django's request_started/request_finished, each call starts and ends with
# close_old_connections(), so a connection broken or past CONN_MAX_AGE is never reused.


def unary_call(
    method: Callable[..., Response],
) -> Callable[[Any, Any, grpc.ServicerContext], Response]:
    """Authenticate, run `method(self, request, context, user=...)`, map its errors."""

    @functools.wraps(method)
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Response:
        close_old_connections()
        try:
            user = authenticate(context)
            return method(self, request, context, user=user)
        except Exception as exc:
            failure = to_rpc_abort(exc)
        finally:
            close_old_connections()
        abort(context, failure)
        raise AssertionError("unreachable: abort() raises")

    return handler


def stream_call(
    method: Callable[..., Iterator[Response]],
) -> Callable[[Any, Any, grpc.ServicerContext], Iterator[Response]]:
    """unary_call for a server-streaming method."""

    @functools.wraps(method)
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Response]:
        thread = threading.get_ident()
        close_old_connections()
        failure: RpcAbort | None = None
        try:
            user = authenticate(context)
            yield from method(self, request, context, user=user)
        except Exception as exc:
            failure = to_rpc_abort(exc)
        finally:
            # A stream the client dropped is closed by garbage collection, possibly in
            # another thread, whose connections are not ours to close.
            if threading.get_ident() == thread:
                close_old_connections()
        if failure is not None:
            abort(context, failure)

    return handler


def _task_for(*, user: AbstractBaseUser, task_id: str) -> Task:
    """The caller's task; Http404 (NOT_FOUND) for a malformed id too, as REST's URL does."""
    try:
        parsed = UUID(task_id)
    except ValueError:
        raise Http404("No such task.") from None
    return selectors.task_get_for(user=user, task_id=parsed)


# --- The servicer ------------------------------------------------------------------------


class TaskServicer(pb_grpc.TaskServiceServicer):
    def __init__(self, *, max_watchers: int) -> None:
        # Each WatchTasks stream holds a pool thread for its whole life. Capping streams
        # below the pool size keeps threads free for unary calls and health checks, so a
        # crowd of watchers makes new watchers wait (RESOURCE_EXHAUSTED), not everyone.
        self._watch_slots = threading.BoundedSemaphore(max_watchers)
        self._stopping = threading.Event()

    def begin_shutdown(self) -> None:
        """Ask every open WatchTasks stream to end (UNAVAILABLE: reconnect and resume)."""
        self._stopping.set()

    @unary_call
    def CreateTask(self, request: pb.CreateTaskRequest, context, *, user) -> pb.Task:
        # The REST input serializer is the one definition of a valid create request
        # (title required and <= 200 characters, kind known, timeout in range...).
        # proto3 cannot tell an unset string from "": an empty one counts as not sent (it
        # takes the create's default), as REST without it, which an idempotent create
        # retried over REST must match.
        data: dict[str, Any] = {"title": request.title}
        if request.description:
            data["description"] = request.description
        if request.kind:
            data["kind"] = request.kind
        if request.callback_url:
            data["callback_url"] = request.callback_url
        if request.HasField("params"):
            data["params"] = messages.struct_to_dict(request.params)
        if request.HasField("timeout"):
            data["timeout"] = request.timeout
        if request.HasField("run_at"):
            data["run_at"] = messages.timestamp_to_datetime(request.run_at)
        if request.HasField("max_attempts"):
            data["max_attempts"] = request.max_attempts
        if request.HasField("retry_backoff"):
            data["retry_backoff"] = request.retry_backoff
        payload = TaskCreateInputSerializer(data=data)
        if not payload.is_valid():
            raise invalid_argument(payload.errors)
        if not request.idempotency_key:  # proto3: unset and "" are one; both mean no key
            task = services.task_create(owner=user, **payload.validated_data)
            return messages.task_to_proto(task)
        if problem := services.idempotency_key_problem(request.idempotency_key):
            raise invalid_argument({"idempotency_key": [problem]})
        outcome = services.task_create_idempotent(
            owner=user, key=request.idempotency_key, sent_fields=set(data), **payload.validated_data
        )
        if not outcome.created:
            context.set_trailing_metadata(((IDEMPOTENT_REPLAYED_METADATA, "true"),))
        return messages.task_to_proto(outcome.task)

    @unary_call
    def GetTask(self, request: pb.GetTaskRequest, context, *, user) -> pb.Task:
        return messages.task_to_proto(_task_for(user=user, task_id=request.id))

    @unary_call
    def ListTasks(self, request: pb.ListTasksRequest, context, *, user) -> pb.ListTasksResponse:
        if request.page_size < 0:
            raise invalid_argument({"page_size": ["Must not be negative."]})
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        filters = {
            "status": messages.status_from_proto(request.status, field="status"),
            "kind": request.kind or None,
        }
        tasks = selectors.task_list_for(user=user, **filters)
        tasks = messages.page_after(tasks, token=request.page_token, filters=filters)
        rows = list(tasks[: page_size + 1])
        next_page_token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            next_page_token = messages.page_token_encode(last=rows[-1], filters=filters)
        return pb.ListTasksResponse(
            tasks=[messages.task_to_proto(task) for task in rows],
            next_page_token=next_page_token,
        )

    @unary_call
    def CancelTask(self, request: pb.CancelTaskRequest, context, *, user) -> pb.Task:
        task = _task_for(user=user, task_id=request.id)
        return messages.task_to_proto(services.task_cancel(task=task))

    @unary_call
    def RetryTask(self, request: pb.RetryTaskRequest, context, *, user) -> pb.Task:
        task = _task_for(user=user, task_id=request.id)
        # Unset (not an empty Struct) keeps the task's params; task_retry checks new ones.
        params = messages.struct_to_dict(request.params) if request.HasField("params") else None
        return messages.task_to_proto(services.task_retry(task=task, params=params))

    @stream_call
    def WatchTasks(self, request: pb.WatchTasksRequest, context, *, user) -> Iterator[pb.TaskEvent]:
        """Replay the user's task events after `after_event_id`, then follow live ones.

        Live delivery polls the event log (user, seq > last sent) every WATCH_POLL_SECONDS
        instead of listening to the user's Channels group. It is gap-free by construction:
        a user's events commit in seq order (notifications.models.EventCounter), so once
        seq N is visible every seq below N is visible too, and "seq > last sent" can
        neither skip nor repeat one. A group push, by contrast, can be dropped (layer
        capacity, Redis restart) and would need this same read to heal. The cost is one
        indexed query per stream per poll and up to WATCH_POLL_SECONDS of latency.
        """
        if request.after_event_id < 0:
            raise invalid_argument({"after_event_id": ["Must not be negative."]})
        task_id = _task_for(user=user, task_id=request.task_id).pk if request.task_id else None
        if not self._watch_slots.acquire(blocking=False):
            raise RpcAbort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "Too many open WatchTasks streams on this server; retry shortly.",
            )
        try:
            ended = threading.Event()
            # Fires when the call ends for any reason: client cancel, deadline, disconnect.
            if not context.add_callback(ended.set):
                return
            context.send_initial_metadata(
                ((LAST_EVENT_ID_METADATA, str(event_log.newest_event_id(user_id=user.pk))),)
            )
            last_sent = request.after_event_id
            while context.is_active():
                if self._stopping.is_set():
                    raise RpcAbort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"Server shutting down; reconnect with after_event_id={last_sent}.",
                    )
                batch = list(
                    event_log.task_updates_after(user=user, after_id=last_sent, task_id=task_id)[
                        :WATCH_BATCH_SIZE
                    ]
                )
                for event in batch:
                    yield messages.task_event_to_proto(event)
                    last_sent = event.seq
                if len(batch) < WATCH_BATCH_SIZE:
                    ended.wait(WATCH_POLL_SECONDS)
        finally:
            self._watch_slots.release()


# --- The server --------------------------------------------------------------------------


@dataclass
class TaskHubGrpcServer:
    server: grpc.Server
    servicer: TaskServicer
    health: health.HealthServicer
    port: int
    max_workers: int

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float) -> None:
        """Stop taking calls, give in-flight unary calls `grace` seconds, end the streams."""
        self.health.enter_graceful_shutdown()  # probes see NOT_SERVING from now on
        self.servicer.begin_shutdown()
        self.server.stop(grace).wait()


def create_server(
    *, port: int, host: str | None = None, max_workers: int | None = None
) -> TaskHubGrpcServer:
    """A TaskService server bound to host:port (0: any free port; see `.port`), not started.

    `host` defaults to settings.TASKHUB_GRPC_HOST (loopback unless configured: no listener is
    wider than the operator chose). Raises RuntimeError if the port cannot be bound.
    """
    host = host or settings.TASKHUB_GRPC_HOST
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal, as gRPC's target syntax wants it
    max_workers = max_workers or settings.TASKHUB_GRPC_MAX_WORKERS
    if max_workers < 2:
        raise ValueError("max_workers must be at least 2")
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            # grpc sets SO_REUSEPORT by default, so a second server on a taken port would
            # start "fine" and share the traffic; fail loudly instead.
            ("grpc.so_reuseport", 0),
            # Ping idle connections so a client that vanished without closing (a network
            # partition, a killed laptop) releases its WatchTasks thread.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    servicer = TaskServicer(max_watchers=max_workers - max(1, max_workers // 4))
    pb_grpc.add_TaskServiceServicer_to_server(servicer, server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound_port = server.add_insecure_port(f"{host}:{port}")
    if not bound_port:  # older grpc returns 0 instead of raising
        raise RuntimeError(f"could not bind {host}:{port}")
    return TaskHubGrpcServer(server, servicer, health_servicer, bound_port, max_workers)
