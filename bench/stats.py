"""Summaries of repeated measurements: the median and p95, never a single sample."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's
    default), so p95 of a small sample lies between its two largest values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float], *, scale: float = 1.0) -> dict[str, Any]:
    """n, p50, p95, mean, min and max of `values` times `scale` (1000: seconds -> ms)."""
    scaled = [value * scale for value in values]
    if not scaled:
        return {"n": 0}
    return {
        "n": len(scaled),
        "p50": round(percentile(scaled, 50), 3),
        "p95": round(percentile(scaled, 95), 3),
        "mean": round(sum(scaled) / len(scaled), 3),
        "min": round(min(scaled), 3),
        "max": round(max(scaled), 3),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return round(numerator / denominator, 2)
