"""The schedule REST API: thin views over schedules.services and schedules.selectors."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from schedules import selectors, services
from schedules.api.serializers import (
    ScheduleInputSerializer,
    ScheduleOutputSerializer,
    SchedulePreviewInputSerializer,
    SchedulePreviewOutputSerializer,
)
from taskhub.pagination import CappedPageNumberPagination


class ScheduleListCreateApi(APIView):
    pagination_class = CappedPageNumberPagination

    @extend_schema(responses=ScheduleOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        paginator = CappedPageNumberPagination()
        page = paginator.paginate_queryset(
            selectors.schedule_list_for(user=request.user), request, view=self
        )
        return paginator.get_paginated_response(ScheduleOutputSerializer(page, many=True).data)

    @extend_schema(request=ScheduleInputSerializer, responses={201: ScheduleOutputSerializer})
    def post(self, request: Request) -> Response:
        payload = ScheduleInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        schedule = services.schedule_create(owner=request.user, **payload.changes)
        return Response(ScheduleOutputSerializer(schedule).data, status=status.HTTP_201_CREATED)


class ScheduleDetailApi(APIView):
    @extend_schema(responses=ScheduleOutputSerializer)
    def get(self, request: Request, schedule_id: int) -> Response:
        schedule = selectors.schedule_get_for(user=request.user, schedule_id=schedule_id)
        return Response(ScheduleOutputSerializer(schedule).data)

    @extend_schema(request=ScheduleInputSerializer, responses=ScheduleOutputSerializer)
    def put(self, request: Request, schedule_id: int) -> Response:
        return self._update(request, schedule_id, partial=False)

    @extend_schema(request=ScheduleInputSerializer, responses=ScheduleOutputSerializer)
    def patch(self, request: Request, schedule_id: int) -> Response:
        return self._update(request, schedule_id, partial=True)

    def _update(self, request: Request, schedule_id: int, *, partial: bool) -> Response:
        schedule = selectors.schedule_get_for(user=request.user, schedule_id=schedule_id)
        payload = ScheduleInputSerializer(schedule, data=request.data, partial=partial)
        payload.is_valid(raise_exception=True)
        schedule = services.schedule_update(schedule=schedule, **payload.changes)
        return Response(ScheduleOutputSerializer(schedule).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, schedule_id: int) -> Response:
        schedule = selectors.schedule_get_for(user=request.user, schedule_id=schedule_id)
        services.schedule_delete(schedule=schedule)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchedulePreviewApi(APIView):
    """The next five run times of an unsaved schedule: what saving it now would give."""

    @extend_schema(
        request=SchedulePreviewInputSerializer, responses=SchedulePreviewOutputSerializer
    )
    def post(self, request: Request) -> Response:
        payload = SchedulePreviewInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        runs = selectors.schedule_preview_runs(
            cron=payload.validated_data["cron"],
            every_seconds=payload.validated_data["every_seconds"],
            timezone_name=payload.validated_data["timezone"],
        )
        return Response({"next_runs": [moment.isoformat() for moment in runs]})
