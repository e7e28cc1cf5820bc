"""Library logging, in the style of huggingface_hub: `get_logger(__name__)`.

The root "hubguard" logger has no handler of its own until `HUBGUARD_VERBOSITY` asks for one.
"""

from __future__ import annotations

import logging

_ROOT = "hubguard"
_configured = False


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    from hubguard import constants

    level_name = constants.HUBGUARD_VERBOSITY
    root = logging.getLogger(_ROOT)
    if level_name:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(getattr(logging, level_name, logging.WARNING))


def get_logger(name: str | None = None) -> logging.Logger:
    """Return a logger under the `hubguard` namespace."""
    _configure_root()
    if not name or name == _ROOT:
        return logging.getLogger(_ROOT)
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)
