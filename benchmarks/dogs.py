"""Dog fingerprints over the zoo: is every derivative's dog closest to its own base's dog?

    python benchmarks/dogs.py [--zoo DIR] [--out FILE] [--sheet PNG]

Distance: the renderer's trait distance (`hubguard.portraits.renderer.trait_distance`): the Euclidean
distance between the 42 drawn traits (head shape, ears, snout, eyes, coat colours, markings, ...), each in
[0, 1]. It measures what a viewer sees, before pixels — pixel distances saturate early because every dog
shares the background and layout. Prints JSON: the nearest-base rate, the distance distributions
(derivative to own base, derivative to other bases, base to base — the hardest negatives share one
architecture and data), per-model detail, and writes a contact sheet of all bases and derivatives.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _bases(entry: dict[str, Any]) -> set[str]:
    base = entry.get("base")
    return set(base) if isinstance(base, list) else {base} if base else set()


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"min": round(min(xs), 3), "mean": round(statistics.fmean(xs), 3), "max": round(max(xs), 3), "n": len(xs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / "out" / "zoo")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sheet", type=Path, default=ROOT / "benchmarks" / "results" / "dogs_sheet.png")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from lineage import emit_json, load_zoo  # benchmarks/lineage.py: the manifest (or the models built so far)

    from hubguard.lineage.fingerprints import compute_fingerprint
    from hubguard.portraits.dogs import dog_vector
    from hubguard.portraits.renderer import render_dog, trait_distance
    from hubguard.portraits.sheet import make_sheet

    manifest = load_zoo(args.zoo)
    models = {m["name"]: m for m in manifest["models"]}
    path = {n: Path(m["path"]) if Path(m["path"]).is_absolute() else args.zoo / m["path"] for n, m in models.items()}
    vec = {n: dog_vector(compute_fingerprint(path[n], name=n)) for n in models}
    bases = [n for n, m in models.items() if m["kind"] == "base"]

    detail, own, other = [], [], []
    nearest_ok = 0
    derivatives = [n for n, m in models.items() if m["kind"] != "base" and _bases(m)]  # students derive from no base
    for n in derivatives:
        truth = _bases(models[n])
        dist = {b: trait_distance(a=vec[n], b=vec[b]) for b in bases}
        nearest = min(dist, key=dist.get)
        ok = nearest in truth
        nearest_ok += ok
        own += [dist[b] for b in truth if b in dist]
        other += [d for b, d in dist.items() if b not in truth]
        detail.append({"model": n, "kind": models[n]["kind"], "bases": sorted(truth), "nearest": nearest, "ok": ok,
                       "distance_own": round(min(dist[b] for b in truth if b in dist), 3),
                       "distance_nearest_other": round(min(d for b, d in dist.items() if b not in truth), 3)})
    base_pairs = [trait_distance(a=vec[a], b=vec[b]) for i, a in enumerate(bases) for b in bases[i + 1 :]]
    same_family = [trait_distance(a=vec[a], b=vec[b]) for i, a in enumerate(bases) for b in bases[i + 1 :]
                   if models[a]["family"] == models[b]["family"]]

    order = []
    for b in bases:
        order.append(b)
        order += [n for n in derivatives if b in _bases(models[n]) and n not in order]
    items = [(render_dog(vector=vec[n], size=192), f"{n}\n{models[n]['kind']}") for n in order]
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    make_sheet(items=items, columns=8).save(args.sheet)

    out = {
        "zoo": {"root": str(manifest.get("root")), "quick": manifest.get("quick"), "partial": manifest.get("partial", False)},
        "distance": "trait_distance (Euclidean over the renderer's 42 traits in [0, 1]; independent N(0, I) vectors ≈ 2.6)",
        "derivatives": len(derivatives),
        "nearest_own_base_rate": round(nearest_ok / max(len(derivatives), 1), 4),
        "derivative_to_own_base": _stats(own),
        "derivative_to_other_bases": _stats(other),
        "base_to_base": _stats(base_pairs),
        "base_to_base_same_family": _stats(same_family),
        "sheet": str(args.sheet.relative_to(ROOT)) if args.sheet.is_relative_to(ROOT) else str(args.sheet),
        "detail": detail,
    }
    emit_json(out, path=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
