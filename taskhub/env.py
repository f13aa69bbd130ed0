"""Typed readers for settings that come from the environment.

Each helper raises ImproperlyConfigured naming the variable, so a typo in a deployment
fails at start-up with a message instead of somewhere deep in a request.
"""

from __future__ import annotations

import os
import re
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


_Number = TypeVar("_Number", int, float)


def _env_number(
    name: str,
    default: _Number,
    parse: type[_Number],
    what: str,
    minimum: _Number | None,
    maximum: _Number | None = None,
) -> _Number:
    """env_int's and env_float's one body: `what` names the type in the error message."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be {what}, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be <= {maximum}, got {value}")
    return value


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    return _env_number(name, default, int, "an integer", minimum, maximum)


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _env_number(name, default, float, "a number", minimum)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# DRF's rate syntax: a count, a slash, and a period it reads by its first letter.
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.I)


def env_rate(name: str, default: str) -> str:
    """A throttle rate like `600/min` (DRF's `<count>/<s|min|hour|day>`)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    match = _RATE.match(raw)
    if not match or int(match.group(1)) < 1:
        raise ImproperlyConfigured(f"{name} must be a rate like 600/min or 10/s, got {raw!r}")
    return f"{int(match.group(1))}/{match.group(2).lower()}"


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_log_level(name: str, default: str) -> str:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return level
