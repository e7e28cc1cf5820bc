"""Which registry folder to use, and the dataset card written into it.

Order: an explicit path (CLI `--registry`), then `HUBGUARD_REGISTRY`, then the user's copy
(`HUBGUARD_HOME/registry`) if it exists, else the shipped registry (read-only). The shipped registry is the
repository's top-level `registry/` folder; an installed wheel carries it as package data under
`hubguard/registry/data/`. Writing to the shipped registry first seeds the user's copy from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from hubguard import constants
from hubguard.registry import schema


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
    if path is not None:
        return Path(path).expanduser(), None
    env = constants.hubguard_registry()
    if env:
        return Path(env).expanduser(), None
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
        configs.append(f"- config_name: verdicts\n  data_files: {schema.VERDICTS_FILE}")
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
- `{schema.VERDICTS_FILE}`: the verdict log of the upload hooks (which upload matched which base, score,
  z, verdict, whether it was flagged).
- `{schema.FINGERPRINT_DIR}/*.safetensors`: verification data (invariant terms) of each entry.
- `{schema.MANIFEST_FILE}`: the base models `hubguard registry build --manifest` fingerprints.

Read it with `datasets.load_dataset("<this repo>", "entries")`, or search it with
`hubguard registry search MODEL --registry <folder>`. Every file carries schema version
{schema.SCHEMA_VERSION}; readers ignore columns they do not know.
"""
