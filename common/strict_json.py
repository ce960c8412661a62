"""metrics.json without bare Infinity/NaN, and back: shared by the server that
writes run directories and the hospital tools that read them."""

from __future__ import annotations

import numpy as np

NON_FINITE = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def strict_json(value):
    """Non-finite numbers as the strings "Infinity", "-Infinity", "NaN": bare
    Infinity/NaN are not JSON, and strict parsers (hospital tools) reject them."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return "NaN" if np.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def revive_json(value):
    """The inverse of `strict_json` for a parsed metrics.json."""
    if isinstance(value, dict):
        return {k: revive_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [revive_json(v) for v in value]
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    return value
