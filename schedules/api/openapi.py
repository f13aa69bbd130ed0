"""What the schema says of the schedule bodies beyond the serializers' own types, so it
tells the truth (taskhub/tests/test_schema_fuzz.py): exactly one of cron and
every_seconds, the ranges, the time zones and kinds this deployment has. A
drf-spectacular postprocessing hook (settings.SPECTACULAR_SETTINGS), run after
taskhub.openapi's."""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from django.conf import settings

from schedules import services, timing


def _cron_field_pattern(number: str) -> str:
    item = rf"(\*|({number})(-({number}))?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


# The common cron syntax: numbers, *, ranges, lists and steps; @hourly and the like. The
# API takes more (names like MON, days 29-31, L, #; croniter decides) but a body this
# pattern allows is always accepted.
CRON_PATTERN = (
    "^("
    + " ".join(
        _cron_field_pattern(number)
        for number in (
            r"[1-5]?[0-9]",  # minute
            r"1?[0-9]|2[0-3]",  # hour
            r"[1-9]|1[0-9]|2[0-8]",  # day of month
            r"[1-9]|1[0-2]",  # month
            r"[0-6]",  # day of week
        )
    )
    + "|"
    + "|".join(sorted(timing.ALIASES))
    + ")$"
)


def _zones() -> list[str]:
    zones = []
    for name in sorted(available_timezones()):
        try:
            timing.time_zone(name)
        except ValueError:
            continue
        zones.append(name)
    return zones


def describe_schedule_bodies(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    schemas = result["components"]["schemas"]
    cron = {
        "type": "string",
        "maxLength": 100,
        "pattern": CRON_PATTERN,
        "description": "A 5-field cron expression (minute hour day-of-month month "
        "day-of-week) read in `timezone`, or @hourly, @daily, @weekly, @monthly, @yearly.",
    }
    every_seconds = {
        "type": "integer",
        "minimum": settings.TASKHUB_SCHEDULE_MIN_INTERVAL_SECONDS,
        "maximum": services.MAX_EVERY_SECONDS,
        "description": "Or: run every this many seconds.",
    }
    zone = {
        "type": "string",
        "enum": _zones(),
        "default": "UTC",
        "description": "The IANA time zone the cron expression is read in.",
    }
    template = schemas["TaskTemplateRequest"]["properties"]
    template["kind"] = {
        "type": "string",
        "enum": sorted(settings.TASKHUB_TASK_PROCESSORS),
        "default": "simulate",
    }
    template["params"] = {"type": "object", "additionalProperties": True}
    template["timeout"] = {
        "type": "integer",
        "nullable": True,
        "minimum": 1,
        "maximum": settings.TASKHUB_TASK_MAX_TIMEOUT,
        "description": "Seconds; null: TASK_DEFAULT_TIMEOUT.",
    }
    for name in ("ScheduleInputRequest", "SchedulePreviewInputRequest"):
        body = schemas[name]
        properties = body["properties"]
        properties.pop("cron")
        properties.pop("every_seconds")
        properties["timezone"] = zone
        body["oneOf"] = [
            {
                "properties": {"cron": cron},
                "required": ["cron"],
                "not": {"required": ["every_seconds"]},
            },
            {
                "properties": {"every_seconds": every_seconds},
                "required": ["every_seconds"],
                "not": {"required": ["cron"]},
            },
        ]
    # A preview without a body has neither cron nor every_seconds: refused like a create.
    preview = result["paths"].get("/api/schedules/preview/", {}).get("post", {})
    if "requestBody" in preview:
        preview["requestBody"]["required"] = True
    # An edit may name either (naming one switches the schedule to it) or neither.
    patched = schemas["PatchedScheduleInputRequest"]["properties"]
    patched["cron"] = cron
    patched["every_seconds"] = {**every_seconds, "nullable": True}
    patched["timezone"] = zone
    return result
