"""`hubguard fingerprint | fingerprint-batch | compare | dog`: the lineage commands.

Examples:
    hubguard fingerprint ./my-model --out my-model.fp.safetensors
    hubguard fingerprint hf://meta-llama/Llama-3.2-1B --json
    hubguard fingerprint-batch ./model-a ./model-b --out-dir fps --json
    hubguard compare ./base ./candidate --json
    hubguard compare base.fp.safetensors hf://someone/suspect@main --sheet pair.png
    hubguard dog ./my-model --out dog.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hubguard.cli.errors import EXIT_BAD_INPUT
from hubguard.cli.output import print_json as _print_json

FamilyOpt = typer.Option("--family", help="Force an architecture map (e.g. llama); default: the one config.json names.")
BaseOpt = typer.Option("--base", help="For a PEFT adapter: its base model (folder or hf://ORG/NAME); default: the "
                       "base_model_name_or_path of adapter_config.json.")


def register(app: typer.Typer) -> None:
    """Add the lineage commands to `app`."""
    for name, fn in (("fingerprint", fingerprint), ("fingerprint-batch", fingerprint_batch), ("compare", compare),
                     ("dog", dog)):
        app.command(name=name)(fn)


def parse_budget(text: str) -> float | str | None:
    """'auto' | 'all' | a fraction such as 0.02 or 2%."""
    from hubguard.errors import FingerprintError

    t = text.strip().lower()
    if t in {"auto", "all"}:
        return None if t == "all" else "auto"
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise FingerprintError(f"--budget must be 'auto', 'all', a fraction like 0.02 or a percentage like 2%; got {text!r}.") from None
    return value


def fingerprint(
    source: Annotated[str, typer.Argument(help="Model folder, .safetensors file, or hf://ORG/NAME[@REVISION].")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Save the fingerprint here (.safetensors).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    max_layers: Annotated[int | None, typer.Option(help="Use at most this many layers, spread evenly.")] = None,
    budget: Annotated[str, typer.Option(help="Reading budget: a fraction of the checkpoint's bytes (e.g. 0.02), 'auto' or 'all'.")] = "auto",
    allow_pickle: Annotated[bool, typer.Option(help="Read .bin/.pt weights with torch.load(weights_only=True).")] = False,
    family: Annotated[str | None, FamilyOpt] = None,
    base: Annotated[str | None, BaseOpt] = None,
) -> None:
    """Fingerprint a model: invariant terms of its layers over a versioned token set. A PEFT adapter folder is
    fingerprinted as base ⊕ adapter.

    Example: hubguard fingerprint ./my-model --out my-model.fp.safetensors
    """
    from hubguard.lineage.fingerprint_files import save_fingerprint
    from hubguard.lineage.fingerprints import compute_fingerprint

    fp = compute_fingerprint(source, max_layers=max_layers, budget=parse_budget(budget), allow_pickle=allow_pickle,
                             family=family, base=base)
    summary = fp.summary()
    if out is not None:
        summary["saved_to"] = str(save_fingerprint(fp, out))
    if as_json:
        _print_json(summary)
        return
    st = fp.stats
    typer.echo(f"{fp.name}: {fp.model['family']} ({fp.model.get('binding')}), {len(fp.layers)} layers, "
               f"{len(fp.tokens)} tokens, terms {sorted(fp.terms)}")
    typer.echo(f"read {st['bytes_read']:,} of {st['bytes_total']:,} bytes ({100 * st['bytes_read'] / max(st['bytes_total'], 1):.1f}%) "
               f"in {st['requests']} reads, {st['seconds']} s")
    if out is not None:
        typer.echo(f"saved to {summary['saved_to']}")


def fingerprint_batch(
    sources: Annotated[list[str], typer.Argument(help="Model folders, .safetensors files or hf://ORG/NAME (hf://ORG/NAME@REVISION).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for the NAME.fp.safetensors files.")],
    address: Annotated[str | None, typer.Option(help="Ray cluster to join: 'auto' or ray://HOST:PORT (default: a local Ray runtime).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray runtime (default: all); one per source.")] = None,
    max_layers: Annotated[int | None, typer.Option(help="Use at most this many layers, spread evenly.")] = None,
    budget: Annotated[str, typer.Option(help="Reading budget: a fraction of the checkpoint's bytes (e.g. 0.02), 'auto' or 'all'.")] = "auto",
    allow_pickle: Annotated[bool, typer.Option(help="Read .bin/.pt weights with torch.load(weights_only=True).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per source, in input order.")] = False,
) -> None:
    """Fingerprint many models in parallel on Ray (needs the 'scale' extra of hubguard, which installs Ray).

    Exit code 0 when every source was fingerprinted, 2 when some could not be (each failure on stderr).

    Example: hubguard fingerprint-batch ./model-a ./model-b hf://org/model-c --out-dir fps --json
    """
    from hubguard.lineage.batch import fingerprint_many

    items = fingerprint_many(sources=sources, out_dir=out_dir, address=address, num_cpus=num_cpus,
                             max_layers=max_layers, budget=parse_budget(budget), allow_pickle=allow_pickle)
    failed = [i for i in items if not i.ok]
    if as_json:
        _print_json([i.to_dict() for i in items])
    else:
        for i in items:
            if i.ok:
                typer.echo(f"ok      {i.source} -> {i.path} ({len(i.summary['layers'])} layers, {i.seconds:.1f} s)")
        typer.echo(f"{len(items) - len(failed)} of {len(items)} fingerprinted into {out_dir}")
    for i in failed:
        typer.secho(f"failed  {i.source}: {i.error}", err=True, fg=typer.colors.RED)
    if failed:
        raise typer.Exit(code=EXIT_BAD_INPUT)


def format_comparison(result: Any) -> str:
    lines = [
        f"verdict: {result.verdict}   score: {result.score:.1f} / 100   z: {result.z:.1f}"
        + (f"   null FPR: {result.false_positive_rate:.3g}" if result.false_positive_rate is not None else ""),
        "terms:   " + "  ".join(f"{k}={v:.1f}" for k, v in result.terms.items()),
        f"tokens:  {result.common_tokens} shared",
        "layers (candidate <- reference, score, z; heads and experts candidate<-reference):",
    ]
    for m in result.layers:
        units = "  heads " + " ".join(f"{c}<-{r}" for c, r, _ in m.heads) if m.heads else ""
        units += "  experts " + " ".join(f"{c}<-{r}" for c, r, _ in m.experts) if m.experts else ""
        lines.append(f"  {m.layer:>3} <- {m.match:<3} {m.score:6.1f}  z={m.z:6.1f}{units}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def compare(
    a: Annotated[str, typer.Argument(help="Reference: a source or a saved fingerprint.")],
    b: Annotated[str, typer.Argument(help="Candidate: a source or a saved fingerprint.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    sheet: Annotated[Path | None, typer.Option(help="Also write a side-by-side dog sheet PNG here.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Read .bin/.pt weights with torch.load(weights_only=True).")] = False,
    family: Annotated[str | None, FamilyOpt] = None,
    base: Annotated[str | None, BaseOpt] = None,
) -> None:
    """Compare two models: score (0-100), z against the calibrated null, verdict and per-layer map.

    Example: hubguard compare ./base ./candidate --json
    """
    from hubguard.lineage.api import compare_with_fingerprints

    fa, fb, result = compare_with_fingerprints(a, b, allow_pickle=allow_pickle, family=family, base=base)
    if sheet is not None:
        from hubguard.portraits.dogs import comparison_sheet

        comparison_sheet(query=fb, matches=[(fa, result)]).save(sheet)
    if as_json:
        _print_json(result.to_dict())
    else:
        typer.echo(format_comparison(result))


def dog(
    source: Annotated[str, typer.Argument(help="A source or a saved fingerprint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 512,
) -> None:
    """Draw the model's dog fingerprint: similar lineage looks alike.

    Example: hubguard dog ./my-model --out dog.png
    """
    from hubguard.lineage.api import as_fingerprint
    from hubguard.portraits.dogs import dog_image

    dog_image(as_fingerprint(source), size=size).save(out)
    typer.echo(f"wrote {out}")
