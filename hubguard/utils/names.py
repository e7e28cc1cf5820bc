"""File-system and Hub-safe names."""

from __future__ import annotations

import re


def slug(name: str) -> str:
    """A file-system and Hub-safe file stem for a name ("org/model" -> "org--model")."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-.")
    if not s:
        raise ValueError(f"'{name}' has no usable characters for a file name")
    return s[:180]
