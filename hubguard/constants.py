"""Constants and environment variables, read once at import time."""

from __future__ import annotations

import os
from pathlib import Path


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


# Progress bars (tqdm) are shown unless this is set.
HUBGUARD_DISABLE_PROGRESS_BARS: bool = _env_flag("HUBGUARD_DISABLE_PROGRESS_BARS") or _env_flag(
    "HF_HUB_DISABLE_PROGRESS_BARS"
)

# Where hubguard keeps its writable data (registry copy, remote tensor cache).
HUBGUARD_HOME: Path = Path(
    os.environ.get("HUBGUARD_HOME")
    or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "hubguard"
)
HUBGUARD_CACHE: Path = Path(
    os.environ.get("HUBGUARD_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hubguard"
)

# Registry selected by the user (CLI --registry wins over this).
HUBGUARD_REGISTRY: str | None = os.environ.get("HUBGUARD_REGISTRY") or None

# The Hub's own limit on a safetensors header; larger headers are refused.
SAFETENSORS_MAX_HEADER_BYTES: int = 25_000_000

# Version of the fingerprint method. Fingerprints of different major versions are not comparable.
FINGERPRINT_METHOD: str = "hubguard-invariants"
FINGERPRINT_VERSION: int = 1
SCHEMA_VERSION: int = 1

# Pickle-based weight files hubguard never unpickles unless told to with weights_only=True.
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
