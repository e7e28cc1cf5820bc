"""`hubguard registry build --manifest`: fingerprint the base models a manifest lists, over the network.

The manifest (`registry/manifest.toml`) lists `[[model]]` tables with `repo_id`, `family`, `license` and
optionally `revision`, `gated`, `notes`. Each model is fingerprinted remotely (HTTP Range reads of a few
tensors) and added as soon as it is done, so an interrupted build resumes where it stopped: models already
in the registry are skipped. A model that fails (gated, missing, unsupported, offline) is reported with
its error and the build goes on. When the Hub cannot be reached at all, every model fails at once with
the same clear error instead of waiting on retries.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hubguard import constants
from hubguard.errors import HubguardError, RegistryError
from hubguard.registry import schema
from hubguard.utils import get_logger, progress

if TYPE_CHECKING:
    from hubguard.registry.store import Registry

logger = get_logger(__name__)

MANIFEST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ManifestModel:
    repo_id: str
    family: str
    license: str
    revision: str | None = None
    gated: bool = False
    notes: str | None = None


@dataclass(frozen=True)
class BuildReport:
    added: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "skipped": list(self.skipped),
                "failed": [{"repo_id": r, "error": e} for r, e in self.failed]}


def load_manifest(path: "str | os.PathLike[str]") -> list[ManifestModel]:
    """Parse and validate a manifest; errors name the file and the offending model."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as err:
        raise RegistryError(f"Manifest '{p}' does not exist.") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RegistryError(f"Manifest '{p}' is not valid TOML: {err}.") from err
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > MANIFEST_SCHEMA_VERSION:
        raise RegistryError(f"Manifest '{p}' has schema_version {version!r}; this hubguard reads {MANIFEST_SCHEMA_VERSION}.")
    models, seen = [], set()
    for i, m in enumerate(data.get("model", [])):
        if not isinstance(m, dict) or not all(isinstance(m.get(k), str) and m.get(k) for k in ("repo_id", "family", "license")):
            raise RegistryError(f"Manifest '{p}': model #{i + 1} needs string fields repo_id, family and license (got {m!r}).")
        if m["repo_id"].count("/") != 1:
            raise RegistryError(f"Manifest '{p}': '{m['repo_id']}' is not an ORG/NAME repo id.")
        if m["repo_id"] in seen:
            raise RegistryError(f"Manifest '{p}': '{m['repo_id']}' is listed twice.")
        seen.add(m["repo_id"])
        models.append(ManifestModel(repo_id=m["repo_id"], family=m["family"], license=m["license"],
                                    revision=m.get("revision"), gated=bool(m.get("gated", False)), notes=m.get("notes")))
    if not models:
        raise RegistryError(f"Manifest '{p}' lists no [[model]] tables.")
    return models


def hub_reachable(*, timeout_s: float = 5.0) -> str | None:
    """None when the Hub endpoint accepts connections, else why not (offline mode, DNS, refused, timeout)."""
    from huggingface_hub import constants as hf_constants

    if hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.hf_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as err:
        return f"cannot connect to {url.scheme}://{url.netloc} ({err})"


def build(
    registry: "Registry",
    *,
    manifest: "str | os.PathLike[str] | None" = None,
    only: list[str] | None = None,
    max_layers: int | None = None,
    token: str | None = None,
    storage: str = "auto",
) -> BuildReport:
    """Fingerprint every manifest model not yet in `registry` and add it; see the module docstring."""
    from hubguard.lineage.fingerprints import compute_fingerprint
    from hubguard.weights.source import open_source

    path = Path(manifest) if manifest is not None else registry.path / schema.MANIFEST_FILE
    models = load_manifest(path)
    if only:
        unknown = sorted(set(only) - {m.repo_id for m in models})
        if unknown:
            raise RegistryError(f"{unknown} are not in manifest '{path}'.")
        models = [m for m in models if m.repo_id in only]
    present = set(registry.names())
    todo = [m for m in models if m.repo_id not in present]
    skipped = tuple(m.repo_id for m in models if m.repo_id in present)
    offline = hub_reachable() if todo else None
    added, failed = [], []
    for m in progress(todo, desc="registry build", total=len(todo)):
        if offline is not None:
            msg = f"{m.repo_id}: the Hub is unreachable: {offline}. Run the build where the Hub can be reached."
            logger.error(msg)
            failed.append((m.repo_id, msg))
            continue
        spec = f"hf://{m.repo_id}" + (f"@{m.revision}" if m.revision else "")
        try:
            ckpt = open_source(spec, token=token)
            fp = compute_fingerprint(ckpt, max_layers=max_layers, name=m.repo_id)
            sha = getattr(ckpt.store, "sha", None) or fp.model.get("revision") or m.revision  # the resolved commit
            registry.add(fp, name=m.repo_id, family=m.family, license=m.license, repo_id=m.repo_id,
                         revision=sha, notes=m.notes, storage=storage)
        except HubguardError as err:
            logger.error("%s: %s", m.repo_id, err)
            failed.append((m.repo_id, f"{m.repo_id}: {err}"))
            continue
        added.append(m.repo_id)
    return BuildReport(added=tuple(added), skipped=skipped, failed=tuple(failed))
