"""Which registry folder to use, and the dataset card written into it.

Order: an explicit path (CLI `--registry`), then `HUBGUARD_REGISTRY`, then the user's copy
(`HUBGUARD_HOME/registry`) if it exists, else the shipped registry (read-only). The shipped registry is the
repository's top-level `registry/` folder; an installed wheel carries it as package data under
`hubguard/registry/data/`. Writing to the shipped registry first seeds the user's copy from it.

A path or `HUBGUARD_REGISTRY` of the form `hf://datasets/ORG/NAME[@REVISION]` names a Hub dataset: it is read
from a local mirror (`hubguard.registry.hub.ensure_mirror`), which a Space keeps in sync
(`hubguard.registry.sync`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hubguard import constants
from hubguard.errors import RegistryError
from hubguard.registry import schema

HUB_PREFIX = "hf://datasets/"
# pathlib collapses "//": Path("hf://datasets/o/n") prints as "hf:/datasets/o/n"; both name the dataset.
_HUB_SPEC = re.compile(r"^hf:/{1,2}datasets/(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^\s]+))?/?$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class HubRegistry:
    """A registry that lives in a Hub dataset repo."""

    repo_id: str
    revision: str | None = None

    @property
    def spec(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_hub_registry(spec: "str | os.PathLike[str] | None") -> HubRegistry | None:
    """`HubRegistry` for `hf://datasets/ORG/NAME[@REV]`, None for anything else (a folder)."""
    if spec is None:
        return None
    text = os.fspath(spec).strip()
    if not text.startswith("hf:/"):
        return None
    m = _HUB_SPEC.match(text)
    if m is None or not all(_REPO_PART.match(p) for p in m["repo"].split("/")):
        raise RegistryError(f"'{text}' is not a Hub dataset registry; write hf://datasets/ORG/NAME or "
                            "hf://datasets/ORG/NAME@REVISION (or give a folder).")
    return HubRegistry(repo_id=m["repo"], revision=m["rev"] or None)


def shipped_registry() -> Path | None:
    """The registry that ships with hubguard (wheel package data, else the source checkout's `registry/`)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data", here.parent.parent / "registry"):
        if (candidate / schema.INFO_FILE).is_file():
            return candidate
    return None


def user_registry() -> Path:
    return constants.HUBGUARD_HOME / "registry"


def resolve(path: "str | os.PathLike[str] | None") -> tuple[Path, Path | None]:
    """(folder to read, folder to seed on first write or None when the folder itself is written)."""
    chosen = path if path is not None else constants.hubguard_registry()
    hub = parse_hub_registry(chosen)
    if hub is not None:
        from hubguard.registry.hub import ensure_mirror

        return ensure_mirror(repo_id=hub.repo_id, revision=hub.revision, token=constants.hf_token()), None
    if chosen:
        return Path(chosen).expanduser(), None
    user = user_registry()
    if (user / schema.INFO_FILE).is_file():
        return user, None
    shipped = shipped_registry()
    if shipped is None:
        return user, None
    return shipped, user


def card_text(*, n_entries: int, n_verdicts: int, families: list[str]) -> str:
    """README.md of a registry folder: Hub dataset card YAML (configs for `datasets.load_dataset`) + prose."""
    configs = []
    if n_entries:
        configs.append(f"- config_name: entries\n  data_files: {schema.ENTRIES_FILE}\n  default: true")
    if n_verdicts:
        configs.append(f"- config_name: verdicts\n  data_files: \"{schema.VERDICTS_GLOB}\"")
    yaml = "\n".join(
        [
            "---",
            "license: apache-2.0",
            "pretty_name: hubguard lineage registry",
            "tags:",
            "- hubguard",
            "- model-lineage",
            "- fingerprints",
            *(["configs:", *configs] if configs else []),
            f"hubguard_schema_version: {schema.SCHEMA_VERSION}",
            "---",
        ]
    )
    fams = ", ".join(families) if families else "none yet"
    return f"""{yaml}

# hubguard lineage registry

Reference fingerprints of base models, used by [hubguard](https://github.com/) to tell whether an upload
derives from a registered base. {n_entries} entries (families: {fams}); {n_verdicts} logged verdicts.

- `{schema.ENTRIES_FILE}`: one row per base model — repo id, revision, family, licence, parameter count,
  architecture, tokenizer hash, declared base model, fingerprint method version, who added it and when,
  and a 512-value search sketch.
- `{schema.VERDICTS_GLOB}`: the verdict log of the upload hooks (which upload matched which base, score,
  z, verdict, whether it was flagged).
- `{schema.FINGERPRINT_DIR}/*.safetensors`: verification data (invariant terms) of each entry.
- `{schema.MANIFEST_FILE}`: the base models `hubguard registry build --manifest` fingerprints.

Read it with `datasets.load_dataset("<this repo>", "entries")`, or search it with
`hubguard registry search MODEL --registry <folder>`. Every file carries schema version
{schema.SCHEMA_VERSION}; readers ignore columns they do not know.
"""
