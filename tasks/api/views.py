"""The task REST API: thin views over tasks.services and tasks.selectors."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from taskhub.pagination import CappedPageNumberPagination
from tasks import cache, selectors, services
from tasks.api.serializers import (
    TaskCreateInputSerializer,
    TaskListFilterSerializer,
    TaskOutputSerializer,
    TaskRetryInputSerializer,
)
from tasks.selectors import DEFAULT_ORDERING


def _is_popular_first_page(request: Request) -> bool:
    """The reads worth caching (tasks/cache.py): the first page of the user's list, newest
    first (the default order, or asked for by name as the dashboard does), all tasks or one
    status (e.g. "my pending tasks"), in any page size."""
    params = request.query_params
    return (
        set(params) <= {"status", "page", "page_size", "ordering"}
        and params.get("page", "1") == "1"
        and params.get("ordering", DEFAULT_ORDERING) == DEFAULT_ORDERING
    )


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name=IDEMPOTENCY_KEY_HEADER,
    location=OpenApiParameter.HEADER,
    required=False,
    type={
        "type": "string",
        "minLength": 1,
        "maxLength": services.IDEMPOTENCY_KEY_MAX_LENGTH,
        # printable ASCII, no space at either end (services.idempotency_key_problem)
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
    description=(
        "Any unique string, e.g. a UUID. The same key from the same user within "
        "IDEMPOTENCY_KEY_HOURS (24) answers with the first task, status and body, instead "
        "of making a second one; with another body, 422 (docs/api.md)."
    ),
)


class TaskListCreateApi(APIView):
    # For the schema only: GET pages its list with this class (drf-spectacular then
    # documents the page object, not a bare array).
    pagination_class = CappedPageNumberPagination

    @extend_schema(parameters=[TaskListFilterSerializer], responses=TaskOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        filters = TaskListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        if _is_popular_first_page(request):
            return self._cached_first_page(request, status=filters.validated_data.get("status"))
        tasks = selectors.task_list_for(user=request.user, **filters.validated_data)
        paginator = CappedPageNumberPagination()
        page = paginator.paginate_queryset(tasks, request, view=self)
        return paginator.get_paginated_response(TaskOutputSerializer(page, many=True).data)

    def _cached_first_page(self, request: Request, *, status: str | None) -> Response:
        paginator = CappedPageNumberPagination()
        page_size = paginator.get_page_size(request)

        def fill() -> dict:
            tasks = selectors.task_list_for(user=request.user, status=status)
            page = paginator.paginate_queryset(tasks, request, view=self)
            rows = [dict(row) for row in TaskOutputSerializer(page, many=True).data]
            return {"count": paginator.page.paginator.count, "results": rows}

        page = cache.task_list_first_page_cached(
            user=request.user, status=status, page_size=page_size, fill=fill
        )
        # The links are the request's own (its host), so they are built here, not cached.
        has_next = page["count"] > page_size
        next_link = replace_query_param(request.build_absolute_uri(), "page", 2)
        return Response(
            {
                "count": page["count"],
                "next": next_link if has_next else None,
                "previous": None,
                "results": page["results"],
            }
        )

    @extend_schema(
        request=TaskCreateInputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={
            201: TaskOutputSerializer,
            422: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="The Idempotency-Key was used with a different request body.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if key is not None and (problem := services.idempotency_key_problem(key)):
            raise ValidationError({IDEMPOTENCY_KEY_HEADER: [problem]})
        payload = TaskCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        if key is None:
            task = services.task_create(owner=request.user, **payload.validated_data)
            return Response(TaskOutputSerializer(task).data, status=status.HTTP_201_CREATED)
        # A replay answers the first request's status code with the task as it is now
        # (docs/api.md, "Idempotent creates": its status may have moved on since).
        outcome = services.task_create_idempotent(
            owner=request.user,
            key=key,
            sent_fields=set(request.data),
            **payload.validated_data,
        )
        response = Response(TaskOutputSerializer(outcome.task).data, status=outcome.response_status)
        if not outcome.created:
            response["Idempotent-Replayed"] = "true"
        return response


class TaskDetailApi(APIView):
    @extend_schema(responses=TaskOutputSerializer)
    def get(self, request: Request, task_id: str) -> Response:
        def fill() -> dict:
            task = selectors.task_get_for(user=request.user, task_id=task_id)
            return dict(TaskOutputSerializer(task).data)

        return Response(cache.task_detail_cached(user=request.user, task_id=task_id, fill=fill))


class TaskCancelApi(APIView):
    @extend_schema(request=None, responses=TaskOutputSerializer)
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_for(user=request.user, task_id=task_id)
        return Response(TaskOutputSerializer(services.task_cancel(task=task)).data)


class TaskRetryApi(APIView):
    @extend_schema(request=TaskRetryInputSerializer, responses=TaskOutputSerializer)
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_for(user=request.user, task_id=task_id)
        payload = TaskRetryInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        retried = services.task_retry(task=task, params=payload.validated_data.get("params"))
        return Response(TaskOutputSerializer(retried).data)
