from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from tasks.models import Task, TaskStatus
from tasks.processors import registry

TASK_FIELDS = (
    "id",
    "title",
    "description",
    "kind",
    "params",
    "status",
    "progress",
    "result",
    "error",
    "timeout",
    "attempts",
    "run_at",
    "created_at",
    "updated_at",
    "queued_at",
    "started_at",
    "finished_at",
)


class TaskOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = TASK_FIELDS
        read_only_fields = TASK_FIELDS


class TaskCreateInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200)
    description = serializers.CharField(
        max_length=10000, required=False, allow_blank=True, default=""
    )
    kind = serializers.CharField(max_length=64, required=False, default="simulate")
    params = serializers.JSONField(required=False, default=dict)
    timeout = serializers.IntegerField(required=False, min_value=1)
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_kind(self, value: str) -> str:
        if value not in registry.available_kinds():
            known = ", ".join(sorted(registry.available_kinds()))
            raise serializers.ValidationError(f"Unknown kind {value!r}; known kinds: {known}.")
        return value

    def validate_params(self, value: object) -> object:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value

    def validate_timeout(self, value: int) -> int:
        if value > settings.TASKHUB_MAX_TIMEOUT:
            raise serializers.ValidationError(
                f"Must be at most {settings.TASKHUB_MAX_TIMEOUT} seconds."
            )
        return value


class TaskListFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    kind = serializers.CharField(max_length=64, required=False)
    ordering = serializers.ChoiceField(
        choices=[
            f"{sign}{field}"
            for field in ("created_at", "updated_at", "title", "status", "progress")
            for sign in ("", "-")
        ],
        required=False,
    )
