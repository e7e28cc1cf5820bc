"""Upload hooks: the pre-upload check (library, CLI, `hubguard upload`, git and pre-commit hooks), the webhook bot
(`hubguard.hooks.bot`) and the hub-wide scan (`hubguard.hooks.scan`)."""

from hubguard.hooks.card import read_declared_lineage
from hubguard.hooks.check import CheckReport, Problem, check_upload
from hubguard.hooks.git import install_git_hook
from hubguard.hooks.upload import upload_checked, upload_folder_checked

__all__ = ["CheckReport", "Problem", "check_upload", "install_git_hook", "read_declared_lineage", "upload_checked",
           "upload_folder_checked"]
