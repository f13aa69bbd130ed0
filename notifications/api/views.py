"""The inbox and the event log over HTTP: thin views over notifications.selectors/services."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors, services
from notifications.api.serializers import (
    EventListFilterSerializer,
    EventOutputSerializer,
    NotificationListFilterSerializer,
    NotificationOutputSerializer,
)
from taskhub.pagination import CappedPageNumberPagination


class NotificationListApi(APIView):
    @extend_schema(
        parameters=[NotificationListFilterSerializer],
        responses=NotificationOutputSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = NotificationListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        notifications = selectors.notification_list_for(
            user=request.user, unread=filters.validated_data["unread"]
        )
        paginator = CappedPageNumberPagination()
        page = paginator.paginate_queryset(notifications, request, view=self)
        response = paginator.get_paginated_response(
            NotificationOutputSerializer(page, many=True).data
        )
        response.data["unread_count"] = selectors.notification_unread_count(user=request.user)
        return response


class NotificationReadApi(APIView):
    @extend_schema(request=None, responses=NotificationOutputSerializer)
    def post(self, request: Request, notification_id: int) -> Response:
        notification = selectors.notification_get_for(
            user=request.user, notification_id=notification_id
        )
        notification = services.notification_mark_read(notification=notification)
        return Response(NotificationOutputSerializer(notification).data)


class NotificationReadAllApi(APIView):
    @extend_schema(
        request=None,
        responses=inline_serializer(
            "NotificationReadAll",
            {"marked": serializers.IntegerField(), "unread_count": serializers.IntegerField()},
        ),
    )
    def post(self, request: Request) -> Response:
        marked = services.notification_mark_all_read(user=request.user)
        unread = selectors.notification_unread_count(user=request.user)
        return Response({"marked": marked, "unread_count": unread})


class EventListApi(APIView):
    """The user's persisted events after `after_id`, oldest first: what a WebSocket resume
    would replay, for clients that poll instead."""

    @extend_schema(
        parameters=[EventListFilterSerializer],
        responses=inline_serializer(
            "EventPage",
            {
                "results": EventOutputSerializer(many=True),
                "last_event_id": serializers.IntegerField(),
                "has_more": serializers.BooleanField(),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        filters = EventListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        limit = filters.validated_data["limit"]
        events = selectors.events_after(
            user_id=request.user.pk, after_id=filters.validated_data["after_id"], limit=limit + 1
        )
        has_more = len(events) > limit
        return Response(
            {
                "results": EventOutputSerializer(events[:limit], many=True).data,
                "last_event_id": selectors.newest_event_id(user_id=request.user.pk),
                "has_more": has_more,
            }
        )


class TaskEventListApi(APIView):
    @extend_schema(responses=EventOutputSerializer(many=True))
    def get(self, request: Request, task_id: str) -> Response:
        events = selectors.task_events_for(user=request.user, task_id=task_id)
        paginator = CappedPageNumberPagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(EventOutputSerializer(page, many=True).data)
