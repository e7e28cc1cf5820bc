"""`hubguard` command line: one Typer app, one file per command group, one error handler (`hubguard.cli.errors`)."""

from hubguard.cli.main import app, main

__all__ = ["app", "main"]
