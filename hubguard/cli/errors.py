"""The command line's one error map and exit-code table (every command, every sub-command):

| code | meaning |
|---|---|
| 0 | ok |
| 1 | a lineage problem, under `--strict` (an undeclared derivative, a false `base_model`) |
| 2 | bad input or unreadable weights: one line on stderr saying what failed and the fix |
| 3 | an internal error (a bug): one line; `hubguard --debug ...` (or HUBGUARD_DEBUG=1) prints the traceback |

Commands raise `HubguardError`s; `GuardedGroup`, the class of every Typer app here, turns them into the line
and the code, so no command handles errors itself.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click
import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from hubguard import constants
from hubguard.errors import HubguardError

EXIT_OK = 0
EXIT_LINEAGE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

_debug = constants.HUBGUARD_DEBUG


def set_debug(on: bool) -> None:
    """`hubguard --debug` for this invocation (HUBGUARD_DEBUG=1 turns it on for every one)."""
    global _debug
    _debug = on or constants.HUBGUARD_DEBUG


def fail(message: str, *, code: int) -> None:
    """Print one line to stderr and exit with `code`."""
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(code=code)


class GuardedGroup(TyperGroup):
    """A Typer group whose commands' errors follow the exit-code table above."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # usage errors (exit 2) and explicit exits keep their own code
        except HubguardError as err:
            if _debug:
                traceback.print_exc(file=sys.stderr)
            fail(f"error: {err}", code=EXIT_BAD_INPUT)
        except Exception as err:  # noqa: BLE001 - anything else is a bug: say so, keep the traceback behind --debug
            if _debug:
                traceback.print_exc(file=sys.stderr)
            fail(f"internal error: {type(err).__name__}: {err}. This is a bug in hubguard; rerun with --debug for "
                 "the traceback and report it.", code=EXIT_INTERNAL)


def group(**kwargs: Any) -> typer.Typer:
    """A Typer app (command group) that follows the exit-code table."""
    return typer.Typer(cls=GuardedGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       **kwargs)
