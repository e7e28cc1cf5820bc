"""`hubguard` command line: one app, one file per command group, one error map (`hubguard.cli.errors`).

    hubguard fingerprint | fingerprint-batch | compare | dog     (hubguard.cli.lineage)
    hubguard registry add | search | list | show | ...          (hubguard.cli.registry)
    hubguard check | hooks install-git | pre-push | pre-commit  (hubguard.cli.hooks)
    hubguard upload                                             (hubguard.cli.upload)
    hubguard bot serve                                          (hubguard.cli.bot)
    hubguard scan                                               (hubguard.cli.scan)
    hubguard protect | lock | audit                             (hubguard.cli.protect)
    hubguard space build | deploy                               (hubguard.cli.space)

Exit codes, every command: 0 ok, 1 lineage problem under --strict, 2 bad input or unreadable, 3 internal error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hubguard.cli import bot, hooks, lineage, protect, registry, scan, space, upload
from hubguard.cli.errors import group, set_debug

app = group(name="hubguard", help="Lineage fingerprints, a base-model registry, upload checks and merge protection "
                                   "for model hubs. Exit codes: 0 ok, 1 lineage problem under --strict, 2 bad input "
                                   "or unreadable weights, 3 internal error.")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of unexpected errors.")] = False,
) -> None:
    set_debug(debug)


lineage.register(app)
hooks.register(app)
upload.register(app)
scan.register(app)
protect.register(app)
app.add_typer(registry.app, name="registry")
app.add_typer(bot.app, name="bot")
app.add_typer(space.app, name="space")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
