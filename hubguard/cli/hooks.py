"""`hubguard check` and `hubguard hooks install-git`: the upload guards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hubguard.cli.errors import group
from hubguard.cli.output import print_json

hooks_app = group(help="Install upload guards.")


def check(
    folder: Annotated[str, typer.Argument(help="The model folder you are about to upload (or hf://ORG/NAME[@REV]).")],
    repo_id: Annotated[str | None, typer.Option("--repo-id", help="The repo it goes to (its own registry entry is not a match).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when an undeclared derivative or a false base_model is found.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    registry: Annotated[str | None, typer.Option("--registry", help="Registry folder (default: HUBGUARD_REGISTRY or the shipped one).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Registry candidates to verify.")] = 5,
    family: Annotated[str | None, typer.Option("--family", help="Force an architecture map (default: the one config.json names).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Read .bin/.pt weights with torch.load(weights_only=True).")] = False,
    base: Annotated[str | None, typer.Option("--base", help="For a PEFT adapter: its base model (folder or hf://ORG/NAME); "
                                             "default: the base_model_name_or_path of adapter_config.json.")] = None,
) -> None:
    """Pre-upload check: flag undeclared derivatives and false or missing base_model metadata.

    Every folder gets a report: weights hubguard cannot read give status 'unreadable' with the reason and the
    fix (exit 2). Exit 1 under --strict when an undeclared derivative or a false base_model is found. A PEFT adapter
    is checked as base ⊕ adapter against the base its adapter_config.json declares (--base: where to read it).

    Example: hubguard check ./my-finetune --repo-id me/my-finetune --strict
    """
    from hubguard.hooks.check import check_upload

    report = check_upload(folder, repo_id=repo_id, registry=registry, top_k=top_k, family=family, allow_pickle=allow_pickle,
                          base=base)
    if as_json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    raise typer.Exit(code=report.exit_code(strict=strict))


def _print_report(report) -> None:  # noqa: ANN001 - CheckReport
    d = report.declared
    typer.echo(f"declared base_model: {', '.join(d['base_model']) or '-'}  relation: {d['base_model_relation'] or '-'}")
    if report.status == "unreadable":
        typer.secho(f"UNREADABLE: {report.reason}", err=True, fg=typer.colors.RED)
        typer.secho(f"fix: {report.fix}", err=True, fg=typer.colors.RED)
        return
    for m in report.matches:
        typer.echo(f"  {m['name']:<50} {m['verdict']:<13} score {m['score']:6.1f}  z {m['z']:6.1f}")
    if not report.matches:
        typer.echo("  no registry entry resembles these weights")
    for p in report.problems:
        typer.secho(f"{'ERROR' if p.is_error else 'warning'} [{p.code}] {p.message}",
                    fg=typer.colors.RED if p.is_error else typer.colors.YELLOW)
    typer.echo("OK: declared lineage and weights agree." if report.agrees else "Declared lineage and weights DISAGREE.")


@hooks_app.command("install-git")
def install_git(
    repo_dir: Annotated[Path, typer.Argument(help="A git clone of the Hub repo.")] = Path("."),
    strict: Annotated[bool, typer.Option(help="Block the push when the check fails.")] = True,
    registry: Annotated[str | None, typer.Option(help="Registry folder the hook should use.")] = None,
) -> None:
    """Install a git pre-push hook that runs `hubguard check` before every push.

    Example: hubguard hooks install-git ./my-model-repo
    """
    from hubguard.hooks.upload import install_git_hook

    typer.echo(f"installed {install_git_hook(repo_dir=repo_dir, strict=strict, registry=registry)}")


def register(app: typer.Typer) -> None:
    """Add `check` and the `hooks` group to `app`."""
    app.command(name="check")(check)
    app.add_typer(hooks_app, name="hooks")
