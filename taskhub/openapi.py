"""drf-spectacular postprocessing: the error answers every view can give, declared once.

The views declare their success answers; the errors come from DRF and from the URLconf
(docs/architecture.md, "Apps and layers": surfaces are thin, DRF shapes the errors), so
they are added here for every operation by the same rules that produce them: a request
with a body or query parameters can be refused (400), a bad or missing credential is 401
(even where anonymous callers are let in: the token is checked when present), an
object in the path may not be the caller's and a page past the last does not exist (404,
never 403: tasks/selectors.py), and the throttles apply everywhere (429 with Retry-After).
`taskhub/tests/test_schema_fuzz.py` checks the result against the running views.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

ERROR_SCHEMA = {
    "type": "object",
    "description": "DRF's error body: `detail`, or one list of messages per field.",
    "additionalProperties": True,
}


# "Holds a character that is not whitespace", as the server sees whitespace. Python's
# str.strip() (DRF's trim) also strips \x1c-\x1f and \x85, which a schema's \S (ECMA 262's
# whitespace, what schemathesis generates from) lets through: a title of "\x1d" alone was
# schema-valid and refused as blank.
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def declare_error_responses(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            parameters = operation.get("parameters", [])
            # Everywhere: a request Django refuses before any view runs (a Host header the
            # server does not serve: DisallowedHost) is answered 400 on every path; S4 at
            # 1,000 examples found GET /api/webhooks/settings/ answering it undeclared.
            responses.setdefault("400", _error("The request is not valid."))
            # Everywhere: a bad Authorization header is refused even where anonymous
            # callers are let in, and the token endpoints refuse bad credentials.
            responses.setdefault("401", _error("No valid credentials."))
            for parameter in parameters:
                if parameter.get("in") == "query" and parameter.get("name") == "page_size":
                    # DRF's pagination takes any page_size and falls back to the default
                    # for one that is not a whole number (taskhub/pagination.py caps it).
                    parameter["schema"] = {
                        "type": "string",
                        "description": "Items per page, at most 100; not a whole number: "
                        "the default.",
                    }
                elif parameter.get("in") == "query" and parameter.get("name") == "query":
                    # /search: a blank query is refused (search.selectors.task_search_for).
                    parameter["schema"] = {
                        **parameter["schema"],
                        "minLength": 1,
                        "pattern": NOT_BLANK,
                    }
                elif parameter.get("in") == "query" and not parameter.get("required"):
                    # DRF trims a value before its blank check: whitespace alone is refused
                    # (400) where "" is not (found at 1,000 examples: /search?kind=%1D).
                    _refuse_blank(parameter["schema"])
                    # DRF reads a blank optional query field as absent ("?status=" is no
                    # filter), so "" is accepted too.
                    parameter["schema"] = {
                        "anyOf": [parameter["schema"], {"type": "string", "maxLength": 0}]
                    }
            if "{" in path or any(p.get("name") == "page" for p in parameters):
                responses.setdefault("404", _error("No such object, or not the caller's."))
            responses.setdefault("429", _error("Throttled: retry after Retry-After seconds."))
    schemas = result["components"]["schemas"]
    _refuse_blank_strings(schemas)
    # A task's params: an object, never null (task_validate_run), default {}.
    schemas["TaskCreateInputRequest"]["properties"]["params"] = {
        "type": "object",
        "additionalProperties": True,
        "description": "The kind's parameters (docs/architecture.md, 'The task path').",
    }
    # The kinds this deployment runs (tasks.processors.registry.available_kinds).
    kind = schemas["TaskCreateInputRequest"]["properties"]["kind"]
    kind["enum"] = sorted(settings.TASKHUB_TASK_PROCESSORS)
    kind.pop("pattern", None)
    # A room's slug is slugified from the name when not given (chat.services), so the
    # name needs a letter or digit, and a slug more than dashes.
    room = schemas["RoomCreateInputRequest"]["properties"]
    room["name"]["pattern"] = "[A-Za-z0-9_]"
    room["slug"]["pattern"] = "^([-A-Za-z0-9_]*[A-Za-z0-9_][-A-Za-z0-9_]*)?$"
    timeout = schemas["TaskCreateInputRequest"]["properties"]["timeout"]
    timeout.update(minimum=1, maximum=settings.TASKHUB_TASK_MAX_TIMEOUT)
    # The retry policy's ranges (tasks.services.task_validate_run).
    create = schemas["TaskCreateInputRequest"]["properties"]
    create["max_attempts"].update(minimum=1, maximum=settings.TASKHUB_TASK_MAX_ATTEMPTS)
    create["retry_backoff"].update(minimum=0, maximum=settings.TASKHUB_TASK_MAX_RETRY_BACKOFF)
    # A retry's new params: an object, like a create's.
    schemas["TaskRetryInputRequest"]["properties"]["params"] = {
        "type": "object",
        "additionalProperties": True,
        "description": "New params for the new attempt; absent: the task's own.",
    }
    return result


def _refuse_blank_strings(schemas: dict[str, Any]) -> None:
    """DRF trims a CharField's whitespace before its blank check, so a request field that
    refuses "" (minLength 1) refuses whitespace alone too: say so with a pattern."""
    for name, component in schemas.items():
        if not name.endswith("Request"):
            continue
        for prop in component.get("properties", {}).values():
            _refuse_blank(prop)


def _refuse_blank(prop: dict[str, Any]) -> None:
    """A string that refuses "" (minLength 1) refuses whitespace alone too (see above)."""
    if (
        prop.get("type") == "string"
        and prop.get("minLength") == 1
        and not {"format", "enum", "pattern"} & set(prop)
    ):
        prop["pattern"] = NOT_BLANK
