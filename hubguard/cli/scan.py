"""`hubguard scan [REPOS...] [--since DATE] [--engine local|ray]`: the moderators' hub-wide sweep."""

from __future__ import annotations

from typing import Annotated

import typer

from hubguard.cli.output import print_json


def scan(
    repos: Annotated[list[str] | None, typer.Argument(help="Repo ids to check (ORG/NAME).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Also check every model created since this date (YYYY-MM-DD).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (Ray Data, --workers actors).")] = "local",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Ray actors (with --engine ray).")] = 2,
    address: Annotated[str | None, typer.Option("--address", help="A Ray cluster to join (default: a local one).")] = None,
    journal: Annotated[str | None, typer.Option("--journal", help="The scan's journal; run again with it to resume (default: HUBGUARD_HOME/scan/journal.sqlite).")] = None,
    registry: Annotated[str | None, typer.Option("--registry", help="Registry folder (its verdict log gets the results).")] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="The token's Hub plan, for its rate limits: anonymous, free or pro (default: free with HF_TOKEN, else anonymous).")] = None,
    share: Annotated[float, typer.Option("--share", min=0.01, max=1.0, help="Share of the plan's 5-minute budgets the scan may use.")] = 0.9,
    retries: Annotated[int, typer.Option("--retries", min=1, help="Tries per repo on network failures.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Check many Hub repos for undeclared lineage and write every verdict to the registry's verdict log.

    Resumable: a scan killed (worker or driver) and run again with the same --journal checks only the repos not
    done. Failed repos are retried, then reported (exit 2 if any failed). Uses HF_TOKEN.
    Example: hubguard scan --since 2026-11-01 --engine ray --workers 4
    """
    from hubguard.hooks.scan import scan as run_scan

    summary = run_scan(repos=repos or [], since=since, engine=engine, journal=journal, registry=registry, workers=workers,
                       address=address, plan=plan, share=share, retries=retries)
    if as_json:
        print_json(summary.to_dict())
    else:
        typer.echo(f"checked {summary.checked} repos; journal {summary.journal}: {summary.counts}")
        for repo in summary.flagged:
            typer.secho(f"  flagged: {repo}", fg=typer.colors.YELLOW)
        for f in summary.failed:
            typer.secho(f"  failed after {f['attempts']} tries: {f['repo_id']}: {f['error']}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2 if summary.failed else 0)


def register(app: typer.Typer) -> None:
    app.command(name="scan")(scan)
