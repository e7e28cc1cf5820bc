"""Upload hooks: the pre-upload check (library, CLI, upload wrapper, git hook) and the webhook bot."""

from hubguard.hooks.card import read_declared_lineage
from hubguard.hooks.check import CheckReport, Problem, check_upload
from hubguard.hooks.upload import install_git_hook, upload_folder_checked

__all__ = ["CheckReport", "Problem", "check_upload", "install_git_hook", "read_declared_lineage",
           "upload_folder_checked"]
