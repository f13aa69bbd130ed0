from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import ISO_8601, serializers
from rest_framework.fields import SkipField, empty
from rest_framework.settings import api_settings

from tasks import extensions, services
from tasks.models import Task, TaskStatus

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
    "max_attempts",
    "retry_backoff",
    "run_at",
    "created_at",
    "updated_at",
    "queued_at",
    "started_at",
    "finished_at",
    "callback_url",
)


# A callback URL as the schema describes it: http(s), a host name of at most four labels
# (each 1-63 characters, a TLD of letters), a port, printable ASCII after. A subset of what
# the field takes (Django's URLValidator, then the webhooks app's SSRF rule), spelled out
# because JSON Schema's "uri" also allows what URLValidator refuses (a host over 253
# characters), so a client that trusted it would be refused.
_LABEL = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
CALLBACK_URL_SCHEMA = {
    "type": "string",
    "maxLength": 2000,
    "pattern": f"^(https?://{_LABEL}(\\.{_LABEL}){{0,2}}\\.[a-z]{{2,24}}(:[1-9][0-9]{{0,3}})?"
    "([/?#][!-~]*)?)?$",
    "description": "Signed POST of the task when it ends (docs/webhooks.md); empty: none. "
    "Refused if the host resolves to a loopback, private or link-local address.",
}


@extend_schema_field(CALLBACK_URL_SCHEMA)
class CallbackUrlField(serializers.URLField):
    """An http(s) URL webhooks may call (the SSRF rule is checked by the serializer that
    uses it, through tasks.extensions)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 2000)
        super().__init__(**kwargs)


def _iso(value: datetime | None) -> str | None:
    # DRF's DateTimeField with ISO_8601: the current time zone, "+00:00" written "Z".
    if value is None:
        return None
    text = value.astimezone(timezone.get_current_timezone()).isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class TaskOutputSerializer(serializers.ModelSerializer):
    """A task as every endpoint shows it (REST, search hits, the cached pages).

    The fields are declared the ModelSerializer way (the OpenAPI schema reads them), but
    the representation is written out: the generic path builds and deep-copies 17 field
    objects for every serializer it makes, which was most of the serializer's cost in a
    create and in a page of search hits. test_serializers.py holds it equal to the generic
    one for tasks in every state.
    """

    # Text, not the model's URLField: "" (no callback URL) is not a "uri" in the schema.
    callback_url = serializers.CharField(read_only=True)

    class Meta:
        model = Task
        fields = TASK_FIELDS
        read_only_fields = TASK_FIELDS

    def to_representation(self, task: Task) -> dict[str, Any]:
        if api_settings.DATETIME_FORMAT != ISO_8601:  # a deployment chose another format
            return super().to_representation(task)
        return {
            "id": _text(task.id),
            "title": _text(task.title),
            "description": _text(task.description),
            "kind": _text(task.kind),
            "params": task.params,
            "status": _text(task.status),
            "progress": None if task.progress is None else int(task.progress),
            "result": task.result,
            "error": _text(task.error),
            "timeout": None if task.timeout is None else int(task.timeout),
            "attempts": None if task.attempts is None else int(task.attempts),
            "max_attempts": None if task.max_attempts is None else int(task.max_attempts),
            "retry_backoff": None if task.retry_backoff is None else int(task.retry_backoff),
            "run_at": _iso(task.run_at),
            "created_at": _iso(task.created_at),
            "updated_at": _iso(task.updated_at),
            "queued_at": _iso(task.queued_at),
            "started_at": _iso(task.started_at),
            "finished_at": _iso(task.finished_at),
            "callback_url": _text(task.callback_url),
        }


class TaskCreateInputSerializer(serializers.Serializer):
    """Shapes a create's input (REST and gRPC). Whether a task may run with it (its kind,
    params and timeout) is services.task_validate_run's to say, for every surface alike."""

    title = serializers.CharField(max_length=200)
    description = serializers.CharField(
        max_length=10000, required=False, allow_blank=True, default=""
    )
    kind = serializers.CharField(max_length=64, required=False, default="simulate")
    params = serializers.JSONField(required=False, default=dict)
    timeout = serializers.IntegerField(required=False)
    # POSTed to, signed, when the task ends (docs/webhooks.md); "": the owner's default.
    callback_url = CallbackUrlField(required=False, allow_blank=True, default="")
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    # The retry policy (docs/tasks.md, "Retries"); absent: the kind's default, else the
    # settings'. The ranges are task_validate_run's.
    max_attempts = serializers.IntegerField(required=False)
    retry_backoff = serializers.IntegerField(required=False)

    RUN_FIELDS = ("kind", "params", "timeout", "max_attempts", "retry_backoff")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """Shape errors, plus the service's run rules for the run fields that did parse:
        one answer names every bad field (REST's 400, gRPC's field violations)."""
        try:
            values, errors = super().to_internal_value(data), {}
        except serializers.ValidationError as exc:
            if not isinstance(data, Mapping):
                raise  # a JSON list or scalar: no fields to check one by one (DRF's 400)
            values, errors = None, dict(exc.detail)
        run = {}
        for name in self.RUN_FIELDS:
            if name in errors:
                continue
            try:
                run[name] = self.fields[name].run_validation(data.get(name, empty))
            except (serializers.ValidationError, SkipField):
                continue
        try:
            services.task_validate_run(
                kind=run.get("kind", "simulate"),
                params=run.get("params", {}),
                timeout=run.get("timeout") or settings.TASKHUB_TASK_DEFAULT_TIMEOUT,
                max_attempts=run.get("max_attempts"),
                retry_backoff=run.get("retry_backoff"),
            )
        except DjangoValidationError as exc:
            for name, messages in exc.message_dict.items():
                if name in run:
                    errors.setdefault(name, messages)
        if errors:
            raise serializers.ValidationError(errors)
        return values

    def validate_callback_url(self, value: str) -> str:
        # Whether TaskHub may call it (the SSRF rule) is the webhooks app's to say, through
        # tasks.extensions, as for every surface (services.task_create checks it again).
        try:
            extensions.callback_url_validate(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["callback_url"]) from None
        return value


class TaskRetryInputSerializer(serializers.Serializer):
    """A retry's optional body: `params` replace the task's for the new attempt ("edit and
    re-run"; services.task_retry checks them like a create's). No body: the same params."""

    params = serializers.JSONField(required=False)


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
