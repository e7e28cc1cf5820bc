"""One error tree for hubguard.

Every message says what failed, why, and how to fix it. Callers catch
`HubguardError` (or a subclass); nothing in hubguard raises a bare exception
for a condition a user can cause.
"""

from __future__ import annotations


class HubguardError(Exception):
    """Base class of every error hubguard raises on purpose."""


# --- weight sources -------------------------------------------------------------------------------


class SourceError(HubguardError):
    """A weight source (folder, file, hf:// repo) cannot be used."""


class SourceNotFoundError(SourceError):
    """The folder, file or repo does not exist or holds no weights."""


class UnsafeCheckpointError(SourceError):
    """A pickle-based checkpoint was refused (it could execute code when loaded)."""


class CorruptCheckpointError(SourceError):
    """A checkpoint file is truncated, its header lies, or a tensor holds NaN/Inf."""


class MissingTensorError(SourceError):
    """A tensor the architecture map requires is not in the checkpoint."""


class RemoteError(SourceError):
    """A remote read failed (network, rate limit, server ignoring Range, ...)."""


# --- architectures ---------------------------------------------------------------------------------


class UnsupportedArchitectureError(HubguardError):
    """No architecture map (JSON file) matches the checkpoint's config."""


class ArchitectureMapError(HubguardError):
    """An architecture JSON file is malformed."""


# --- fingerprints and comparisons ------------------------------------------------------------------


class FingerprintError(HubguardError):
    """A fingerprint cannot be computed, read or compared."""


class IncompatibleFingerprintError(FingerprintError):
    """Two fingerprints were made with incompatible methods or token sets."""


class TokenizerError(FingerprintError):
    """The tokenizer files are missing or unreadable, so tokens cannot be aligned by string."""


# --- registry, hooks, protection -------------------------------------------------------------------


class RegistryError(HubguardError):
    """The lineage registry cannot be read or written."""


class RegistryCorruptError(RegistryError):
    """A file in the registry folder is corrupted or does not belong there."""


class HookError(HubguardError):
    """The pre-upload check or the webhook bot cannot run."""


class ProtectionError(HubguardError):
    """Merge protection training or its audit cannot run."""


class MissingDependencyError(HubguardError):
    """An optional dependency is not installed."""

    @classmethod
    def for_extra(cls, *, package: str, extra: str, purpose: str) -> "MissingDependencyError":
        return cls(
            f"{purpose} needs the package '{package}', which is not installed. "
            f"Install it with: pip install 'hubguard[{extra}]'"
        )
