from __future__ import annotations

from typing import Any

from rest_framework import serializers

from notifications import selectors, services
from notifications.models import Event, Notification


class NotificationOutputSerializer(serializers.Serializer):
    """The same shape as the `notification.new` event's data."""

    def to_representation(self, instance: Notification) -> dict[str, Any]:
        return services.notification_data(instance)


class NotificationListFilterSerializer(serializers.Serializer):
    unread = serializers.BooleanField(required=False, allow_null=True, default=None)


class EventOutputSerializer(serializers.Serializer):
    """An event as the WebSocket envelope carries it (type, id, ts, data)."""

    def to_representation(self, instance: Event) -> dict[str, Any]:
        return selectors.event_frame(instance)


class EventListFilterSerializer(serializers.Serializer):
    after_id = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=selectors.EVENT_PAGE_MAX, default=100)
