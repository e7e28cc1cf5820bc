"""`hubguard check` and `hubguard hooks install-git | pre-push | pre-commit`: the upload guards."""

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
    repo_dir: Annotated[Path, typer.Argument(help="A git clone of the Hub repo (a linked worktree works too).")] = Path("."),
    strict: Annotated[bool, typer.Option(help="Block the push when the check fails.")] = True,
    registry: Annotated[str | None, typer.Option(help="Registry folder the hook should use.")] = None,
) -> None:
    """Install a git pre-push hook that checks every pushed commit (its card, config and weights as committed).

    The hook goes where git runs it (core.hooksPath and worktrees honoured). Example: hubguard hooks install-git ./my-model-repo
    """
    from hubguard.hooks.git import install_git_hook

    typer.echo(f"installed {install_git_hook(repo_dir=repo_dir, strict=strict, registry=registry)}")


def _report_trees(checked, *, strict: bool, as_json: bool) -> None:  # noqa: ANN001 - list[CheckedTree]
    from hubguard.hooks.git import exit_code

    if as_json:
        print_json([{"what": c.what, "tree": c.treeish, **c.report.to_dict()} for c in checked])
    for c in checked if not as_json else []:
        typer.echo(f"hubguard: checking {c.what} ({c.treeish[:12]})")
        _print_report(c.report)
    raise typer.Exit(code=exit_code(checked, strict=strict))


@hooks_app.command("pre-push")
def pre_push(
    remote: Annotated[str, typer.Argument(help="The remote's name (git passes it).")] = "",
    url: Annotated[str, typer.Argument(help="The remote's URL (git passes it).")] = "",
    strict: Annotated[bool, typer.Option(help="Exit 1 when a pushed commit is an undeclared derivative.")] = True,
    registry: Annotated[str | None, typer.Option(help="Registry folder.")] = None,
    repo_id: Annotated[str | None, typer.Option("--repo-id", help="The Hub repo pushed to (default: from the remote URL).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Run by git as the pre-push hook: checks the tree of every pushed commit (refs read from stdin)."""
    import sys

    from hubguard.hooks.git import check_push, parse_pre_push

    refs = parse_pre_push(sys.stdin.read())
    _report_trees(check_push(repo_dir=Path.cwd(), refs=refs, remote_url=url or None, repo_id=repo_id, registry=registry),
                  strict=strict, as_json=as_json)


@hooks_app.command("pre-commit")
def pre_commit(
    strict: Annotated[bool, typer.Option(help="Exit 1 when the files are an undeclared derivative.")] = True,
    registry: Annotated[str | None, typer.Option(help="Registry folder.")] = None,
    repo_id: Annotated[str | None, typer.Option("--repo-id", help="The Hub repo this clone pushes to.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The pre-commit framework's hook (id hubguard-check): checks the staged files, or at the pre-push stage the
    commit being pushed (PRE_COMMIT_TO_REF)."""
    from hubguard.hooks.git import check_staged

    _report_trees(check_staged(repo_dir=Path.cwd(), repo_id=repo_id, registry=registry), strict=strict, as_json=as_json)


def register(app: typer.Typer) -> None:
    """Add `check` and the `hooks` group to `app`."""
    app.command(name="check")(check)
    app.add_typer(hooks_app, name="hooks")
