"""`hubguard space build OUT` and `hubguard space deploy REPO_ID`: the Gradio Space as a folder, and on the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hubguard.cli.errors import group
from hubguard.cli.output import print_json

app = group(name="space", help="Build the hubguard Gradio Space folder, or deploy it to a Hub Space repo.")

RegistryOpt = Annotated[str | None, typer.Option("--registry", help="HUBGUARD_REGISTRY of the Space, e.g. "
                                                 "hf://datasets/ORG/NAME (default: the registry in the wheel).")]
ModeratorsOpt = Annotated[str | None, typer.Option("--moderators", help="Comma-separated Hub usernames allowed to "
                                                   "take moderator actions.")]
OrgOpt = Annotated[str | None, typer.Option("--moderator-org", help="Hub organisation(s) whose members are moderators.")]
TorchOpt = Annotated[str, typer.Option("--torch-index", help="Package index for CPU torch in requirements.txt; "
                                       "'none' pins torch from the default index.")]
WheelOpt = Annotated[Path | None, typer.Option("--wheel", help="Use this hubguard wheel instead of building one.")]


def _settings(registry: str | None, moderators: str | None, org: str | None, torch_index: str):  # noqa: ANN202
    from hubguard.spaceapp.build import SpaceSettings

    split = lambda s: tuple(p.strip() for p in (s or "").split(",") if p.strip())  # noqa: E731
    return SpaceSettings(registry=registry, moderators=split(moderators), moderator_orgs=split(org),
                         torch_index=None if torch_index.lower() in {"", "none", "off"} else torch_index)


@app.command()
def build(
    out: Annotated[Path, typer.Argument(help="Folder to write the Space into (empty or new).")],
    registry: RegistryOpt = None,
    moderators: ModeratorsOpt = None,
    moderator_org: OrgOpt = None,
    torch_index: TorchOpt = "https://download.pytorch.org/whl/cpu",
    wheel: WheelOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")] = False,
) -> None:
    """Write a self-contained Space folder: app.py, README.md (Space YAML), requirements.txt and the hubguard wheel."""
    from hubguard.spaceapp.build import build_space

    folder = build_space(out, settings=_settings(registry, moderators, moderator_org, torch_index), wheel=wheel,
                         overwrite=overwrite)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    typer.echo(f"wrote the Space to {folder}: {', '.join(files)}")


@app.command()
def deploy(
    repo_id: Annotated[str, typer.Argument(help="The Space repo, ORG/NAME (created if missing).")],
    registry: RegistryOpt = None,
    moderators: ModeratorsOpt = None,
    moderator_org: OrgOpt = None,
    torch_index: TorchOpt = "https://download.pytorch.org/whl/cpu",
    wheel: WheelOpt = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Space private.")] = False,
    token: Annotated[str | None, typer.Option("--token", help="Hub token with write access (default: HF_TOKEN / login).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build the Space and upload it to REPO_ID with huggingface_hub; set its variables (registry, moderators)."""
    from hubguard.spaceapp.build import deploy_space

    res = deploy_space(repo_id, settings=_settings(registry, moderators, moderator_org, torch_index), token=token,
                       private=private or None, wheel=wheel)
    if as_json:
        print_json(res)
    else:
        typer.echo(f"deployed {len(res['files'])} files to Space {repo_id}: {res['commit']}")
