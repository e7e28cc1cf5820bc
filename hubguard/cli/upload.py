"""`hubguard upload FOLDER REPO_ID`: check exactly the files an upload sends, then upload them."""

from __future__ import annotations

from typing import Annotated

import typer

from hubguard.cli.hooks import _print_report
from hubguard.cli.output import print_json


def upload(
    folder: Annotated[str, typer.Argument(help="The model folder to upload.")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repo to upload to (created if missing).")],
    strict: Annotated[bool, typer.Option("--strict", help="Refuse the upload (exit 1, or 2 when unreadable) when the check fails.")] = False,
    fix_card: Annotated[bool, typer.Option("--fix-card", help="Write the detected base_model / base_model_relation into README.md first.")] = False,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request (with the report) instead of committing to main.")] = False,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only upload files matching this pattern (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Do not upload files matching this pattern (repeatable).")] = None,
    registry: Annotated[str | None, typer.Option("--registry", help="Registry folder (default: HUBGUARD_REGISTRY or the shipped one).")] = None,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="The commit (or PR) title.")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public", help="Visibility of a repo created by this upload.")] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (default: main).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report and the upload as JSON.")] = False,
) -> None:
    """Check the files the upload will send (after --include/--exclude), optionally fix the model card, upload.

    Without --strict the upload goes ahead and problems are printed; with --strict it is refused. Uses HF_TOKEN.
    Example: hubguard upload ./my-finetune me/my-finetune --strict --fix-card --create-pr
    """
    from hubguard.hooks.upload import upload_checked

    if create_pr and revision:
        raise typer.BadParameter("--create-pr opens a pull request against the main branch; drop --revision.")
    result = upload_checked(folder=folder, repo_id=repo_id, strict=strict, fix_card=fix_card, create_pr=create_pr,
                            allow_patterns=include or None, ignore_patterns=exclude or None, registry=registry,
                            commit_message=commit_message, private=private, revision=revision)
    if as_json:
        print_json({"report": result.report.to_dict(), "files": result.files, "uploaded": result.uploaded,
                    "refused": result.refused, "card_changes": result.card_changes, "commit_url": result.commit_url,
                    "pr_url": result.pr_url})
    else:
        typer.echo(f"checked the {len(result.files)} files to upload: {', '.join(result.files[:8])}"
                   f"{' ...' if len(result.files) > 8 else ''}")
        if result.card_changes:
            typer.echo(f"fixed README.md: {result.card_changes}")
        _print_report(result.report)
        if result.refused:
            typer.secho(result.refused, err=True, fg=typer.colors.RED)
        else:
            typer.echo(f"uploaded: {result.pr_url or result.commit_url}")
    raise typer.Exit(code=result.exit_code(strict=strict) if result.refused else 0)


def register(app: typer.Typer) -> None:
    app.command(name="upload")(upload)
