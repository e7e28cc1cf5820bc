"""One error tree for hubguard.

Every message says what failed, why, and how to fix it. Callers catch `HubguardError` (or a subclass);
nothing in hubguard raises a bare exception for a condition a user can cause. `err.fix` is the fix alone (for
reports that show reason and fix apart): the one given when raised, else the class's general advice.
On the command line every HubguardError is one line on stderr and exit code 2 (`hubguard.cli.errors`).
"""

from __future__ import annotations


class HubguardError(Exception):
    """Base class of every error hubguard raises on purpose."""

    default_fix = "Read the message above; it says what to change."

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self._fix = fix

    @property
    def fix(self) -> str:
        return self._fix or self.default_fix


# --- weight sources -------------------------------------------------------------------------------


class SourceError(HubguardError):
    """A weight source (folder, file, hf:// repo) cannot be used."""

    default_fix = "Point hubguard at a model folder, a .safetensors file or hf://ORG/NAME[@REVISION]."


class SourceNotFoundError(SourceError):
    """The folder, file or repo does not exist or holds no weights."""

    default_fix = "Upload the weights transformers loads (model.safetensors, or an index and its shards)."


class UnsafeCheckpointError(SourceError):
    """A pickle-based checkpoint was refused (it could execute code when loaded)."""

    default_fix = ("Convert the weights to safetensors on a trusted machine (save_pretrained(..., "
                   "safe_serialization=True)), or pass --allow-pickle to read them with torch.load(weights_only=True).")


class CorruptCheckpointError(SourceError):
    """A checkpoint file is truncated, its header lies, or a tensor holds NaN/Inf."""

    default_fix = "Re-download the files, or re-save the model with safetensors."


class MissingTensorError(SourceError):
    """A tensor the architecture map requires is not in the checkpoint."""

    default_fix = "Upload every weight file, with the model's own config.json."


class RemoteError(SourceError):
    """A remote read failed (network, rate limit, server ignoring Range, ...)."""

    default_fix = "Check the network, HF_ENDPOINT and HF_TOKEN, then retry."


class BaseModelUnavailableError(SourceError):
    """An adapter's base model cannot be read, so base ⊕ adapter cannot be fingerprinted."""

    default_fix = ("Pass the base model with --base PATH_OR_hf://ORG/NAME (base=...), or make "
                   "adapter_config.json's base_model_name_or_path point at a readable repo.")


class UnsupportedAdapterError(SourceError):
    """An adapter hubguard cannot combine with its base (not LoRA, DoRA, or an adapter_config.json it cannot use)."""

    default_fix = ("Merge the adapter into its base (peft: model.merge_and_unload().save_pretrained(DIR)) and check "
                   "the merged folder.")


# --- architectures ---------------------------------------------------------------------------------


class UnsupportedArchitectureError(HubguardError):
    """No architecture map (JSON file) matches the checkpoint's config."""

    default_fix = ("Add an architecture map for this model_type (a JSON file in a folder named by "
                   "HUBGUARD_ARCHITECTURES), or pass --family NAME to read it with a known map.")


class ArchitectureMapError(HubguardError):
    """An architecture JSON file is malformed."""


# --- fingerprints and comparisons ------------------------------------------------------------------


class FingerprintError(HubguardError):
    """A fingerprint cannot be computed, read or compared."""


class DegenerateWeightsError(FingerprintError, CorruptCheckpointError):
    """Weights no fingerprint can be computed from: NaN/Inf, all zero or constant, or beyond float32's range."""

    default_fix = ("Re-download the checkpoint; if it is the one you trained, its weights are broken (NaN/Inf or "
                   "collapsed to a constant): re-save it from a healthy training state.")


class IncompatibleFingerprintError(FingerprintError):
    """Two fingerprints were made with incompatible methods or token sets."""


class TokenizerError(FingerprintError):
    """The tokenizer files are missing or unreadable, so tokens cannot be aligned by string."""

    default_fix = "Save the model's own tokenizer next to the weights: tokenizer.save_pretrained(DIR)."


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
