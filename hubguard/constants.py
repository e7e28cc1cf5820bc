"""Constants and every environment variable hubguard reads — in this one module.

Settings a process fixes once (data folders, progress bars, verbosity) are read at import. Settings tests and
long-running servers change between calls (the Hub endpoint and token, the registry, remote-read tuning) are
read by the getters below each time they are asked for; nothing else in hubguard touches `os.environ`.
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# --- read once ----------------------------------------------------------------------------------------------

# Progress bars (tqdm) are shown unless this is set.
HUBGUARD_DISABLE_PROGRESS_BARS: bool = _env_flag("HUBGUARD_DISABLE_PROGRESS_BARS") or _env_flag(
    "HF_HUB_DISABLE_PROGRESS_BARS"
)
# Library log level ("info", "debug", ...); unset: hubguard adds no log handler of its own.
HUBGUARD_VERBOSITY: str = os.environ.get("HUBGUARD_VERBOSITY", "").upper()
# Print tracebacks of unexpected errors on the command line (also `hubguard --debug`).
HUBGUARD_DEBUG: bool = _env_flag("HUBGUARD_DEBUG")

# Where hubguard keeps its writable data (registry copy, verdict journal) and its caches.
HUBGUARD_HOME: Path = Path(
    os.environ.get("HUBGUARD_HOME")
    or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "hubguard"
)
HUBGUARD_CACHE: Path = Path(
    os.environ.get("HUBGUARD_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hubguard"
)

# Running on a Hugging Face Space (the Space runtime sets SPACE_ID).
SPACE_ID: str | None = os.environ.get("SPACE_ID") or None

# --- read when asked (tests and servers change these between calls) ---------------------------------------

DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def hf_endpoint() -> str:
    """The Hub URL: `HF_ENDPOINT`, else https://huggingface.co (no trailing slash)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def hf_token() -> str | None:
    """`HF_TOKEN` (None when unset; huggingface_hub's saved login is used by its own client)."""
    return os.environ.get("HF_TOKEN") or None


def hubguard_registry() -> str | None:
    """The registry the user selected with `HUBGUARD_REGISTRY` (a folder or hf://datasets/ORG/NAME[@REV])."""
    return os.environ.get("HUBGUARD_REGISTRY") or None


def extra_architecture_dirs() -> list[Path]:
    """Folders of extra architecture maps (`HUBGUARD_ARCHITECTURES`, os.pathsep-separated)."""
    extra = os.environ.get("HUBGUARD_ARCHITECTURES") or ""
    return [Path(p) for p in extra.split(os.pathsep) if p]


def webhook_secret() -> str | None:
    """The Hub webhook secret the bot checks (`WEBHOOK_SECRET`)."""
    return os.environ.get("WEBHOOK_SECRET") or None


def remote_cache_setting() -> str | None:
    """`HUBGUARD_REMOTE_CACHE`: a folder for the range cache, "off", or None (default folder)."""
    return os.environ.get("HUBGUARD_REMOTE_CACHE")


def remote_retries() -> int:
    return max(1, int(_env_float("HUBGUARD_REMOTE_RETRIES", 5)))


def remote_backoff_s() -> float:
    return _env_float("HUBGUARD_REMOTE_BACKOFF", 1.0)


def remote_max_wait_s() -> float:
    return _env_float("HUBGUARD_REMOTE_MAX_WAIT", 60.0)


def remote_max_gap(default: int) -> int:
    return int(_env_float("HUBGUARD_REMOTE_MAX_GAP", default))


def hub_registry_refresh_s() -> float:
    """`HUBGUARD_REGISTRY_REFRESH`: seconds a local mirror of an hf://datasets registry is used before the Hub is
    asked whether it moved (default 300)."""
    return max(0.0, _env_float("HUBGUARD_REGISTRY_REFRESH", 300.0))


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in (os.environ.get(name) or "").replace(";", ",").split(",") if p.strip())


# --- the Space (Space variables and secrets; read when the app starts) -------------------------------------


def space_moderators() -> tuple[str, ...]:
    """`HUBGUARD_MODERATORS`: Hub usernames allowed to take moderator actions in the Space (comma-separated)."""
    return _env_list("HUBGUARD_MODERATORS")


def space_moderator_orgs() -> tuple[str, ...]:
    """`HUBGUARD_MODERATOR_ORG`: Hub organisations whose members are moderators (comma-separated)."""
    return _env_list("HUBGUARD_MODERATOR_ORG")


def space_moderator_token() -> str | None:
    """`HUBGUARD_MODERATOR_TOKEN`: a secret that makes its bearer a moderator where no Hub OAuth is set up
    (a local run); unset: no token is accepted."""
    return os.environ.get("HUBGUARD_MODERATOR_TOKEN") or None


def space_moderator_name() -> str:
    """`HUBGUARD_MODERATOR_NAME`: the name the verdict log records for the token moderator (default local-moderator)."""
    return os.environ.get("HUBGUARD_MODERATOR_NAME") or "local-moderator"


def space_oauth_configured() -> bool:
    """Hub OAuth is available: on a Space with `hf_oauth: true` (the runtime sets OAUTH_CLIENT_ID)."""
    return bool(os.environ.get("OAUTH_CLIENT_ID"))


def space_sync_batch() -> int:
    """`HUBGUARD_SYNC_BATCH`: pending registry changes that trigger a commit back to the Hub dataset (default 20)."""
    return max(1, int(_env_float("HUBGUARD_SYNC_BATCH", 20)))


def space_sync_interval_s() -> float:
    """`HUBGUARD_SYNC_INTERVAL`: seconds after which pending changes are committed anyway (default 60)."""
    return max(0.05, _env_float("HUBGUARD_SYNC_INTERVAL", 60.0))


def space_max_audit_parameters() -> int:
    """`HUBGUARD_AUDIT_MAX_PARAMETERS`: the largest base model the Space's protection audit loads (default 5e8)."""
    return int(_env_float("HUBGUARD_AUDIT_MAX_PARAMETERS", 5e8))


def remote_cache_max_bytes(default: int) -> int:
    """`HUBGUARD_REMOTE_CACHE_MAX_BYTES`: size cap of the range cache (bytes, or with a K/M/G suffix)."""
    return parse_size(os.environ.get("HUBGUARD_REMOTE_CACHE_MAX_BYTES"), default=default)


def parse_size(value: str | None, *, default: int) -> int:
    """'2G', '500M', '64K' or plain bytes; `default` when unset or unreadable."""
    if not value or not value.strip():
        return default
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        return max(0, int(float(text[:-1] if scale > 1 else text) * scale))
    except ValueError:
        return default


def pre_commit_push() -> tuple[str | None, str | None]:
    """What the pre-commit framework tells a hook run at its pre-push stage: (PRE_COMMIT_TO_REF, the commit being
    pushed; PRE_COMMIT_REMOTE_URL). (None, None) at the pre-commit stage."""
    return os.environ.get("PRE_COMMIT_TO_REF") or None, os.environ.get("PRE_COMMIT_REMOTE_URL") or None


# --- fixed --------------------------------------------------------------------------------------------------

# The Hub's own limit on a safetensors header; larger headers are refused.
SAFETENSORS_MAX_HEADER_BYTES: int = 25_000_000

# Version of the fingerprint method. Fingerprints of different major versions are not comparable.
FINGERPRINT_METHOD: str = "hubguard-invariants"
FINGERPRINT_VERSION: int = 2
# Schema version of fingerprint files (the JSON header next to the terms).
FINGERPRINT_SCHEMA_VERSION: int = 1

# Pickle-based weight files hubguard never unpickles unless told to with weights_only=True.
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
