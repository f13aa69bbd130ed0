"""The schedule API's shapes. Whether values may be saved is services.schedule_validate's
to say (the admin asks it too); its flat error keys are nested here the way the body is:
a template field's error under "task"."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from schedules import selectors, services
from schedules.models import Schedule


class TaskTemplateSerializer(serializers.Serializer):
    kind = serializers.CharField(max_length=64, required=False, default="simulate")
    title = serializers.CharField(max_length=200)
    description = serializers.CharField(
        max_length=10000, required=False, allow_blank=True, default=""
    )
    params = serializers.JSONField(required=False, default=dict)
    timeout = serializers.IntegerField(required=False, allow_null=True, default=None)


class ScheduleInputSerializer(serializers.Serializer):
    """A create (all of it) or, with partial=True, an edit. `instance` (an edit) supplies
    the fields the body leaves out, so the whole schedule is validated."""

    cron = serializers.CharField(max_length=100, required=False, allow_blank=True)
    every_seconds = serializers.IntegerField(required=False, allow_null=True)
    timezone = serializers.CharField(max_length=64, required=False)
    enabled = serializers.BooleanField(required=False)
    task = TaskTemplateSerializer(required=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        flat = {k: v for k, v in attrs.items() if k != "task"} | dict(attrs.get("task", {}))
        if self.instance is not None:
            current = {f: getattr(self.instance, f) for f in services.EDITABLE_FIELDS}
            # Switching between cron and interval: naming one clears the other.
            if flat.get("cron") and "every_seconds" not in flat:
                flat["every_seconds"] = None
            elif flat.get("every_seconds") is not None and "cron" not in flat:
                flat["cron"] = ""
            values = current | flat
        else:
            values = services.DEFAULTS | flat
        try:
            services.schedule_validate(**values)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(nest_errors(exc)) from None
        return flat

    @property
    def changes(self) -> dict[str, Any]:
        return dict(self.validated_data)


def nest_errors(exc: DjangoValidationError) -> dict[str, Any]:
    if not hasattr(exc, "error_dict"):
        return {"non_field_errors": exc.messages}
    errors: dict[str, Any] = {}
    for field, messages in exc.message_dict.items():
        if field in services.TEMPLATE_FIELDS:
            errors.setdefault("task", {})[field] = messages
        else:
            errors[field] = messages
    return errors


class SchedulePreviewInputSerializer(serializers.Serializer):
    """An unsaved schedule's timing (a `task` template may come along; it is not checked)."""

    cron = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    every_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)
    timezone = serializers.CharField(max_length=64, required=False, default="UTC")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            # The template's own checks are skipped with a stand-in valid one.
            values = services.schedule_validate(
                **(services.DEFAULTS | attrs | {"title": "preview"})
            )
        except DjangoValidationError as exc:
            raise serializers.ValidationError(nest_errors(exc)) from None
        return {f: values[f] for f in ("cron", "every_seconds", "timezone")}


class SchedulePreviewOutputSerializer(serializers.Serializer):
    next_runs = serializers.ListField(child=serializers.DateTimeField())


class ScheduleOutputSerializer(serializers.ModelSerializer):
    task = serializers.SerializerMethodField()
    next_runs = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = (
            "id",
            "cron",
            "every_seconds",
            "timezone",
            "enabled",
            "task",
            "next_run_at",
            "last_run_at",
            "next_runs",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(TaskTemplateSerializer)
    def get_task(self, schedule: Schedule) -> dict[str, Any]:
        return {f: getattr(schedule, f) for f in services.TEMPLATE_FIELDS}

    @extend_schema_field(serializers.ListField(child=serializers.DateTimeField()))
    def get_next_runs(self, schedule: Schedule) -> list[str]:
        """The next five run times, in the schedule's own time zone (its UTC offset shown)."""
        return [moment.isoformat() for moment in selectors.schedule_next_runs(schedule)]
