from __future__ import annotations

from rest_framework import serializers

from tasks.api.serializers import CallbackUrlField
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSettings


class WebhookSettingsOutputSerializer(serializers.ModelSerializer):
    """Shown to its owner only: the secret is theirs to verify signatures with."""

    # Text, not the model's URLField: "" (none) is not a "uri" in the schema.
    default_url = serializers.CharField(read_only=True)

    class Meta:
        model = WebhookSettings
        fields = ("default_url", "secret", "secret_rotated_at", "updated_at")
        read_only_fields = fields


class WebhookSettingsInputSerializer(serializers.Serializer):
    # Whether TaskHub may call it (the SSRF rule) is webhooks.services' to say.
    default_url = CallbackUrlField(allow_blank=True)


class WebhookAttemptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ("number", "started_at", "status_code", "latency_ms", "error")
        read_only_fields = fields


class WebhookDeliveryOutputSerializer(serializers.ModelSerializer):
    attempt_log = WebhookAttemptOutputSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = (
            "id",
            "event_id",
            "event",
            "task_status",
            "url",
            "state",
            "attempts",
            "next_attempt_at",
            "give_up_at",
            "created_at",
            "delivered_at",
            "last_error",
            "redelivery_of",
            "payload",
            "attempt_log",
        )
        read_only_fields = fields
