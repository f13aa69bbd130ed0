"""The task REST API: thin views over tasks.services and tasks.selectors."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from taskhub.pagination import CappedPageNumberPagination
from tasks import selectors, services
from tasks.api.serializers import (
    TaskCreateInputSerializer,
    TaskListFilterSerializer,
    TaskOutputSerializer,
)


class TaskListCreateApi(APIView):
    @extend_schema(parameters=[TaskListFilterSerializer], responses=TaskOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        filters = TaskListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        tasks = selectors.task_list_for(user=request.user, **filters.validated_data)
        paginator = CappedPageNumberPagination()
        page = paginator.paginate_queryset(tasks, request, view=self)
        return paginator.get_paginated_response(TaskOutputSerializer(page, many=True).data)

    @extend_schema(request=TaskCreateInputSerializer, responses={201: TaskOutputSerializer})
    def post(self, request: Request) -> Response:
        payload = TaskCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        task = services.task_create(owner=request.user, **payload.validated_data)
        return Response(TaskOutputSerializer(task).data, status=status.HTTP_201_CREATED)


class TaskDetailApi(APIView):
    @extend_schema(responses=TaskOutputSerializer)
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_for(user=request.user, task_id=task_id)
        return Response(TaskOutputSerializer(task).data)


class TaskCancelApi(APIView):
    @extend_schema(request=None, responses=TaskOutputSerializer)
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_for(user=request.user, task_id=task_id)
        return Response(TaskOutputSerializer(services.task_cancel(task=task)).data)


class TaskRetryApi(APIView):
    @extend_schema(request=None, responses=TaskOutputSerializer)
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_for(user=request.user, task_id=task_id)
        return Response(TaskOutputSerializer(services.task_retry(task=task)).data)
