"""`hubguard registry ...`: search and manage the registry of base-model fingerprints."""

from __future__ import annotations

from pathlib import Path

import typer

from hubguard.cli.errors import EXIT_BAD_INPUT, group
from hubguard.cli.output import print_json

app = group(name="registry", help="The lineage registry: base-model fingerprints, search, Hub sync.")

RegistryOpt = typer.Option(None, "--registry", help="Registry folder (default: $HUBGUARD_REGISTRY, else your copy "
                           "of the shipped registry).", envvar="HUBGUARD_REGISTRY")
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


def _open(registry: Path | None):  # noqa: ANN202 - Registry
    from hubguard.registry.store import Registry

    return Registry(registry)


@app.command()
def add(
    source: str = typer.Argument(..., help="Model folder, .safetensors file, hf://ORG/NAME[@REV] or saved fingerprint."),
    name: str = typer.Option(..., "--name", help="Entry name, normally the Hub repo id (ORG/NAME)."),
    family: str | None = typer.Option(None, "--family", help="Model family (default: detected)."),
    license: str | None = typer.Option(None, "--license", help="Licence identifier, e.g. apache-2.0."),  # noqa: A002
    base_model: str | None = typer.Option(None, "--base-model", help="Declared base model, if any."),
    relation: str | None = typer.Option(None, "--relation", help="Declared relation: finetune, merge, ..."),
    notes: str | None = typer.Option(None, "--notes"),
    storage: str = typer.Option("auto", "--storage", help="Verification data: auto, float16 or float8."),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing entry of that name."),
    registry: Path | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Fingerprint SOURCE and register it as a base model."""
    reg = _open(registry)
    entry = reg.add(source, name=name, family=family, license=license, base_model=base_model,
                    base_model_relation=relation, notes=notes, storage=storage, replace=replace)
    if as_json:
        print_json(entry.to_dict())
    else:
        typer.echo(f"added {entry.name} ({entry.family}, {entry.storage}, {entry.fingerprint_bytes} bytes) to {reg.path}")


@app.command()
def search(
    source: str = typer.Argument(..., help="Model folder, .safetensors file, hf://ORG/NAME[@REV] or saved fingerprint."),
    top_k: int = typer.Option(5, "--top-k", help="Number of verified matches to show."),
    candidates: int | None = typer.Option(None, "--candidates", help="Sketch candidates to verify (default 4×top-k, ≥16)."),
    registry: Path | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Find the registered bases SOURCE most likely derives from (best first)."""
    results = _open(registry).search(source, top_k=top_k, candidates=candidates)
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    if not results:
        typer.echo("the registry is empty")
    for r in results:
        typer.echo(f"{r.score:7.2f}  z={r.z:7.2f}  {r.verdict:13s} {r.name}")


@app.command("list")
def list_(
    text: str | None = typer.Option(None, "--text", help="Substring of name, repo id, notes or base model."),
    family: str | None = typer.Option(None, "--family"),
    license: str | None = typer.Option(None, "--license"),  # noqa: A002
    registry: Path | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List registered base models."""
    entries = _open(registry).list(text=text, family=family, license=license)
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    for e in entries:
        typer.echo(f"{e.name:50s} {e.family or '-':12s} {e.license or '-':14s} {e.parameters or 0:>14,d}")


@app.command()
def show(name: str, registry: Path | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Show one entry."""
    entry = _open(registry).show(name)
    if as_json:
        print_json(entry.to_dict())
    else:
        for k, v in entry.to_dict().items():
            typer.echo(f"{k:22s} {v}")


@app.command()
def remove(name: str, registry: Path | None = RegistryOpt) -> None:
    """Remove an entry and its verification data."""
    reg = _open(registry)
    reg.remove(name)
    typer.echo(f"removed {name} from {reg.path}")


@app.command()
def push(
    repo_id: str = typer.Argument(..., help="Hub dataset repo (ORG/NAME)."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to main."),
    private: bool = typer.Option(False, "--private", help="Create the dataset repo as private."),
    revision: str | None = typer.Option(None, "--revision"),
    token: str | None = typer.Option(None, "--token", help="Hub token (default: HF_TOKEN / saved login)."),
    registry: Path | None = RegistryOpt,
) -> None:
    """Upload the registry folder to a Hub dataset repo."""
    url = _open(registry).push(repo_id, create_pr=create_pr, private=private or None, revision=revision, token=token)
    typer.echo(url)


@app.command()
def pull(
    repo_id: str = typer.Argument(..., help="Hub dataset repo (ORG/NAME)."),
    revision: str | None = typer.Option(None, "--revision"),
    token: str | None = typer.Option(None, "--token"),
    registry: Path | None = RegistryOpt,
) -> None:
    """Replace the registry folder with a Hub dataset repo's contents."""
    reg = _open(registry)
    path = reg.pull(repo_id, revision=revision, token=token)
    typer.echo(f"pulled {repo_id} into {path} ({len(reg)} entries)")


@app.command()
def build(
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest TOML (default: the registry's manifest.toml)."),
    only: list[str] | None = typer.Option(None, "--only", help="Build only these repo ids (repeatable)."),
    max_layers: int | None = typer.Option(None, "--max-layers", help="Fingerprint at most this many layers per model."),
    token: str | None = typer.Option(None, "--token"),
    registry: Path | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Fingerprint the manifest's base models over the network; resumes where an earlier build stopped."""
    from hubguard.registry.build import build as run_build

    report = run_build(_open(registry), manifest=manifest, only=only or None, max_layers=max_layers, token=token)
    if as_json:
        print_json(report.to_dict())
    else:
        typer.echo(f"added {len(report.added)}, already present {len(report.skipped)}, failed {len(report.failed)}")
        for _, err in report.failed:
            typer.echo(f"  failed: {err}", err=True)
    if report.failed:
        raise typer.Exit(code=EXIT_BAD_INPUT)


@app.command()
def derivatives(name: str, registry: Path | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """All known derivatives of NAME (verdict log and declared base models)."""
    rows = _open(registry).derivatives_of(name)
    if as_json:
        print_json(rows)
    else:
        for r in rows:
            typer.echo(f"{r['repo_id']:50s} {r['via']:9s} {r.get('score') or ''}")


@app.command()
def flagged(registry: Path | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Flagged uploads (newest first)."""
    rows = _open(registry).flagged()
    if as_json:
        print_json(rows)
    else:
        for r in rows:
            typer.echo(f"{r['logged_at']}  {r['repo_id']:40s} {r['verdict']:12s} -> {r['match'] or '-'}  {r['reason'] or ''}")
