"""Number formatting shared by the table renderers (tables.py and its sibling modules)."""

from __future__ import annotations

from typing import Any


def fmt(x: Any, nd: int = 1) -> str:
    """A table cell: floats to `nd` decimals, None as a dash, anything else as it prints."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)
