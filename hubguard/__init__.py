"""hubguard: lineage fingerprints, a base-model registry, upload hooks and merge protection for model hubs.

Public API (heavy dependencies load on first use, so `import hubguard` stays fast):

    fp = hubguard.fingerprint("path/to/model")            # or a .safetensors file, or hf://ORG/NAME
    result = hubguard.compare("base/", "candidate/")        # sources or saved fingerprints
    result.verdict, result.score, result.z
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "fingerprint", "compare", "load_fingerprint", "save_fingerprint", "Registry", "check_upload"]

if TYPE_CHECKING:
    from hubguard.lineage.api import compare, fingerprint
    from hubguard.lineage.fingerprint_files import load_fingerprint, save_fingerprint

_LAZY = {
    "fingerprint": "hubguard.lineage.api",
    "compare": "hubguard.lineage.api",
    "load_fingerprint": "hubguard.lineage.fingerprint_files",
    "save_fingerprint": "hubguard.lineage.fingerprint_files",
    "Registry": "hubguard.registry",
    "check_upload": "hubguard.hooks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hubguard' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
