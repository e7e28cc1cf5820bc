"""`hubguard upload`: check exactly the files an upload sends, optionally fix the model card, then upload.

The Hub has no server-side pre-upload hook, so the check runs where the upload starts. The files are chosen once
(`upload_plan`: huggingface_hub's own pattern filtering, as `upload_folder` applies it), checked through a store
restricted to them (`SelectedFilesStore`), and that same list is what `HfApi.create_commit` sends — so a pattern
that drops README.md cannot pass the check with a card the upload leaves behind.

`--fix-card` writes what the weights show into README.md through huggingface_hub's `ModelCard`: `base_model` (the
registered bases found, plus declared bases the registry cannot verify; false ones removed) and
`base_model_relation`; then the folder is checked again. `--create-pr` opens a pull request (its description is
the hubguard report) and commits to `refs/pr/N`, so the repo's maintainers review it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import HookError
from hubguard.hooks.card import same_repo
from hubguard.hooks.stores import SelectedFilesStore, upload_plan
from hubguard.utils import get_logger
from hubguard.utils.files import atomic_write_text

if TYPE_CHECKING:
    from hubguard.hooks.check import CheckReport
    from hubguard.registry import Registry

logger = get_logger(__name__)
CARD = "README.md"


@dataclass(frozen=True)
class UploadResult:
    """What `upload_checked` did: the report on the uploaded files, whether it uploaded, and where to."""

    report: "CheckReport"
    files: list[str]
    uploaded: bool
    card_fixed: bool = False
    refused: str | None = None  # why the upload was refused (under strict)
    commit_url: str | None = None
    pr_url: str | None = None
    card_changes: dict[str, Any] = field(default_factory=dict)

    def exit_code(self, *, strict: bool) -> int:
        return self.report.exit_code(strict=strict)


def check_planned(*, folder: "str | os.PathLike[str]", files: list[str], repo_id: str | None,
                  registry: "Registry | str | os.PathLike[str] | None", **options: Any) -> "CheckReport":
    """The pre-upload check of exactly `files` of `folder`."""
    from hubguard.hooks.check import check_upload

    store = SelectedFilesStore(folder, files=files, name=f"{folder} (the {len(files)} files to upload)")
    return check_upload(os.fspath(folder), repo_id=repo_id, registry=registry, store=store, **options)


def _named_in(problems: list[Any], code: str, base: str) -> bool:
    return any(p.code == code and f"'{base}'" in p.message for p in problems)


def card_fix(report: "CheckReport") -> dict[str, Any]:
    """The metadata the weights support, as changes to the card ({} when it already agrees): `base_model` = the
    registered bases found plus declared bases the registry cannot verify (false ones dropped; None removes the
    key), `base_model_relation` = the relation the files show."""
    declared = report.declared["base_model"]
    unverifiable = [b for b in declared if _named_in(report.problems, "unverifiable_base_model", b)]
    bases = list(report.found_bases) + [b for b in unverifiable if not any(same_repo(b, f) for f in report.found_bases)]
    changes: dict[str, Any] = {}
    if {b.casefold() for b in bases} != {b.casefold() for b in declared}:
        changes["base_model"] = (bases[0] if len(bases) == 1 else bases) if bases else None
    relation = report.expected_relation if report.found_bases else None
    current = report.declared.get("base_model_relation")
    if relation and relation != current:
        changes["base_model_relation"] = relation
    elif not bases and current:
        changes["base_model_relation"] = None
    return changes


def fix_model_card(*, folder: "str | os.PathLike[str]", report: "CheckReport") -> dict[str, Any]:
    """Write `card_fix(report)` into folder/README.md with huggingface_hub's ModelCard; returns the changes."""
    from huggingface_hub import ModelCard

    if report.declared.get("card_error"):
        raise HookError(f"--fix-card cannot rewrite a model card whose YAML header does not parse "
                        f"({report.declared['card_error']}).", fix="Fix README.md's metadata block by hand, then retry.")
    changes = card_fix(report)
    if not changes:
        return {}
    path = Path(folder) / CARD
    card = ModelCard(path.read_text(encoding="utf-8")) if path.is_file() else ModelCard("---\n---\n\n# Model card\n")
    for key, value in changes.items():
        if value is None:
            card.data.pop(key, None)
        else:
            setattr(card.data, key, value)
    atomic_write_text(path, str(card))
    logger.info("fixed %s: %s", path, changes)
    return changes


def _upload(*, api: Any, folder: Path, files: list[str], repo_id: str, create_pr: bool, report: "CheckReport",
            commit_message: str | None, private: bool | None, revision: str | None) -> tuple[str | None, str | None]:
    """Create the repo if needed, open a PR when asked, commit exactly `files`; returns (commit url, PR url)."""
    from huggingface_hub import CommitOperationAdd

    from hubguard.hooks.bot.report import format_report

    api.create_repo(repo_id, exist_ok=True, private=private)
    pr_url = None
    if create_pr:
        pr = api.create_pull_request(repo_id, title=commit_message or f"Upload {folder.name} (checked by hubguard)",
                                     description=format_report(repo_id=repo_id, revision=None, report=report))
        revision, pr_url = pr.git_reference, getattr(pr, "url", None)
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
    info = api.create_commit(repo_id, operations=ops, revision=revision,
                             commit_message=commit_message or f"Upload {folder.name} (checked by hubguard)")
    return getattr(info, "commit_url", None), pr_url or getattr(info, "pr_url", None)


def upload_checked(
    *,
    folder: "str | os.PathLike[str]",
    repo_id: str,
    strict: bool = True,
    fix_card: bool = False,
    create_pr: bool = False,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
    registry: "Registry | str | os.PathLike[str] | None" = None,
    api: Any = None,
    commit_message: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    **check_options: Any,
) -> UploadResult:
    """Check the files the upload will send, fix the card if asked, then upload — or, under `strict`, refuse
    when the check finds an error-level problem or cannot read the weights (`UploadResult.refused` says why)."""
    from hubguard.registry import Registry

    root = Path(folder).expanduser()
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    files = upload_plan(root, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
    if not files:
        raise HookError(f"No file of '{root}' is left to upload after the include/exclude patterns.")
    report = check_planned(folder=root, files=files, repo_id=repo_id, registry=reg, **check_options)
    changes: dict[str, Any] = {}
    if fix_card and report.status != "unreadable" and card_fix(report):
        if CARD not in files and (root / CARD).exists():
            raise HookError(f"--fix-card would fix {CARD}, but your include/exclude patterns leave it out of the "
                            "upload.", fix=f"Stop excluding {CARD}, or fix the card without --fix-card.")
        changes = fix_model_card(folder=root, report=report)
        files = upload_plan(root, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        if CARD not in files:
            raise HookError(f"--fix-card wrote {CARD}, but your include patterns leave it out of the upload.",
                            fix=f"Add {CARD} to --include.")
        report = check_planned(folder=root, files=files, repo_id=repo_id, registry=reg, **check_options)
    if strict and report.status != "ok":
        errors = [p.message for p in report.problems if p.is_error]
        why = "; ".join(errors) or report.reason or report.status
        return UploadResult(report=report, files=files, uploaded=False, card_fixed=bool(changes), card_changes=changes,
                            refused=f"Upload of '{root}' to '{repo_id}' refused by hubguard: {why}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(library_name="hubguard")
    commit_url, pr_url = _upload(api=api, folder=root, files=files, repo_id=repo_id, create_pr=create_pr, report=report,
                                 commit_message=commit_message, private=private, revision=revision)
    return UploadResult(report=report, files=files, uploaded=True, card_fixed=bool(changes), card_changes=changes,
                        commit_url=commit_url, pr_url=pr_url)


def upload_folder_checked(
    *,
    folder: "str | os.PathLike[str]",
    repo_id: str,
    strict: bool = True,
    registry: Any = None,
    api: Any = None,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
    **upload_kwargs: Any,
) -> tuple["CheckReport", UploadResult]:
    """Library form of `hubguard upload`: raises HookError when the upload is refused under `strict`.

    Returns (the report on the uploaded files, the UploadResult)."""
    result = upload_checked(folder=folder, repo_id=repo_id, strict=strict, registry=registry, api=api,
                            allow_patterns=allow_patterns, ignore_patterns=ignore_patterns, **upload_kwargs)
    if result.refused:
        raise HookError(f"{result.refused} (pass strict=False to upload anyway).")
    return result.report, result
