"""`hubguard space build OUT` / `hubguard space deploy REPO_ID`: a self-contained Gradio Space folder.

The folder holds `app.py` (three lines: the app is `hubguard.spaceapp`), `README.md` with the Space's YAML
(`sdk: gradio`, `sdk_version` = the gradio hubguard was tested with, `app_file`, `hf_oauth: true`,
`short_description`, ...), `requirements.txt` that installs on a fresh Space without any unpublished package
(CPU torch, the hubguard wheel the folder carries under `wheels/` with its `space` extra, gradio with OAuth),
and that wheel. `deploy` builds into a temporary folder, creates the Space repo, uploads the folder with
huggingface_hub and sets the Space variables (registry, moderators).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubguard.errors import HubguardError
from hubguard.spaceapp.wheel import hubguard_wheel

DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TESTED_GRADIO = "6.31.0"  # sdk_version when gradio is not installed here
SHORT_DESCRIPTION = "Which registered base does a model derive from?"  # the Hub allows 60 characters
APP_PY = '''"""hubguard Space (written by `hubguard space build`): the app is the installed package's hubguard.spaceapp."""

from hubguard.spaceapp import launch

if __name__ == "__main__":
    launch()
'''


class SpaceBuildError(HubguardError):
    """The Space folder cannot be built or deployed."""

    default_fix = "Read the message above; `hubguard space build --help` lists the options."


@dataclass(frozen=True)
class SpaceSettings:
    """What the built Space is configured with (Space variables at deploy; README text at build)."""

    title: str = "hubguard · model lineage"
    registry: str | None = None  # HUBGUARD_REGISTRY, e.g. hf://datasets/ORG/NAME
    moderators: tuple[str, ...] = ()
    moderator_orgs: tuple[str, ...] = ()
    torch_index: str | None = DEFAULT_TORCH_INDEX
    extra_requirements: tuple[str, ...] = field(default_factory=tuple)

    def variables(self) -> dict[str, str]:
        out = {"HUBGUARD_REGISTRY": self.registry or "", "HUBGUARD_MODERATORS": ",".join(self.moderators),
               "HUBGUARD_MODERATOR_ORG": ",".join(self.moderator_orgs)}
        return {k: v for k, v in out.items() if v}


def gradio_version() -> str:
    """The Space's sdk_version (pinned in requirements.txt too): the gradio installed here, else the tested one."""
    from importlib import metadata

    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return TESTED_GRADIO


def _torch_pin() -> str:
    try:
        from importlib import metadata

        version = metadata.version("torch").split("+", 1)[0]
    except Exception:  # noqa: BLE001 - torch metadata missing: fall back to the tested release
        version = "2.13.0"
    return version


def readme(settings: SpaceSettings) -> str:
    if len(SHORT_DESCRIPTION) > 60:
        raise SpaceBuildError("The Space's short_description is longer than the Hub's 60 characters.")
    variables = "\n".join(f"| `{k}` | `{v}` |" for k, v in settings.variables().items()) or "| (none set) | |"
    return f"""---
title: {settings.title}
emoji: 🐕
colorFrom: indigo
colorTo: gray
sdk: gradio
sdk_version: {gradio_version()}
python_version: "3.11"
app_file: app.py
hf_oauth: true
hf_oauth_expiration_minutes: 480
pinned: false
license: apache-2.0
short_description: {SHORT_DESCRIPTION}
tags:
- hubguard
- model-lineage
---

# {settings.title}

Does a model on the Hub derive from a registered base model? hubguard reads the safetensors headers and a few
tensors over HTTP Range requests, computes weight invariants that survive permutations, rotations, rescaling,
vocabulary changes and fine-tuning, and compares them with the registry.

- **Lineage check** — `hf://ORG/NAME[@REVISION]`: a verdict card (score, z against independently trained
  models, false-positive rate), the declared `base_model` against what the weights say, the dogs of the model
  and its matches, the per-layer provenance. Every check is logged in the registry's verdict log.
- **Compare two models**, **Registry** (search, entry details, known derivatives), **Moderation** (the flagged
  queue: confirm or dismiss with a note; add or remove entries; mark known derivatives — Hub sign-in, moderators
  only), **Protection audit** (an adapter's scale sweep: does merging break it?).
- Every action is an API endpoint: `gradio_client.Client(SPACE).view_api()`.

## Settings (Space variables and secrets)

| variable | value |
| --- | --- |
{variables}

- `HUBGUARD_REGISTRY`: `hf://datasets/ORG/NAME[@REV]` reads the registry from a Hub dataset and commits the
  Space's verdicts and moderator decisions back to it in batches (a Space has no persistent disk).
- `HUBGUARD_MODERATORS` (usernames) / `HUBGUARD_MODERATOR_ORG` (organisations): who may take moderator actions.
- Secret `HF_TOKEN`: a token that may write the registry dataset (and read gated models).

Built by `hubguard space build`; the hubguard wheel it installs is in `wheels/`.
"""


def requirements(settings: SpaceSettings, wheel_name: str) -> str:
    torch = _torch_pin()
    lines = ["# Written by `hubguard space build`. The Space runs `pip install -r requirements.txt`."]
    if settings.torch_index:
        lines += ["# CPU torch (a Space without a GPU needs no CUDA wheels)", f"--extra-index-url {settings.torch_index}",
                  f"torch=={torch}+cpu"]
    else:
        lines += [f"torch=={torch}"]
    lines += ["# hubguard is not on the package index: the Space carries its wheel",
              f"./wheels/{wheel_name}[space]", f"gradio[oauth]=={gradio_version()}", *settings.extra_requirements]
    return "\n".join(lines) + "\n"


def build_space(out: str | Path, *, settings: SpaceSettings | None = None, wheel: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """Write the Space folder into `out` (empty or missing, unless `overwrite`); returns it."""
    settings = settings or SpaceSettings()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpaceBuildError(f"{out} is not empty, and the Space folder must hold nothing else; give an empty or new "
                              "folder, or pass --overwrite.", fix="Give an empty or new folder, or pass --overwrite.")
    staging = Path(tempfile.mkdtemp(prefix=".hubguard-space-", dir=out.parent if out.parent.exists() else None))
    try:
        wheels = staging / "wheels"
        if wheel is not None:
            if not Path(wheel).is_file() or not str(wheel).endswith(".whl"):
                raise SpaceBuildError(f"--wheel {wheel} is not a wheel file.")
            wheels.mkdir()
            built = Path(shutil.copy2(wheel, wheels / Path(wheel).name))
        else:
            built = hubguard_wheel(wheels)
        (staging / "app.py").write_text(APP_PY, encoding="utf-8")
        (staging / "README.md").write_text(readme(settings), encoding="utf-8")
        (staging / "requirements.txt").write_text(requirements(settings, built.name), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def deploy_space(repo_id: str, *, settings: SpaceSettings | None = None, token: str | None = None,
                 private: bool | None = None, wheel: str | Path | None = None) -> dict[str, Any]:
    """Build the Space and upload it to `repo_id` (created if missing); set its variables. Returns a summary."""
    from huggingface_hub import HfApi

    settings = settings or SpaceSettings()
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hubguard-deploy-") as tmp:
        folder = build_space(Path(tmp) / "space", settings=settings, wheel=wheel)
        try:
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                                     commit_message="hubguard space deploy")
            for key, value in settings.variables().items():
                api.add_space_variable(repo_id, key, value)
        except HubguardError:
            raise
        except Exception as err:  # noqa: BLE001 - huggingface_hub raises HTTP, OS and validation errors alike
            fix = "Check the repo id and that your token (HF_TOKEN or --token) may write there."
            raise SpaceBuildError(f"Deploying the Space to {repo_id} failed: {type(err).__name__}: {err}. {fix}",
                                  fix=fix) from err
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {"repo_id": repo_id, "commit": str(getattr(info, "commit_url", info)), "files": files,
            "variables": settings.variables()}
