"""Lineage benchmark: every (base, candidate) pair of the zoo, scored by hubguard, HuRef's official terms and PCS.

    python benchmarks/lineage.py [--zoo DIR] [--out FILE] [--write-calibration [FILE]]

hubguard's score for a pair is `hubguard compare BASE CANDIDATE` on the two folders: the candidate's layers are
read through its own embedding and through the base's token rows (which finds layers copied under another
embedding). Positives: a candidate derived from the base (fine-tunes, LoRA, vocabulary changes, pruning, duplication,
quantisation, merges, frankenmerges, output-preserving attacks). Negatives: every other pair — the hardest
are bases of one family trained from different seeds on the same data. Prints JSON:

    {"pairs": N, "positives": P, "negatives": Q,
     "methods": {"hubguard": {...}, "huref_official": {...}, "pcs": {...}},
     "multi_base": [...], "calibration": {...}}

where each method has auc, tpr_at_fpr0, min_positive_score, max_negative_score, margin_z and by_kind.
A method that cannot score a pair (shapes differ, vocabularies differ) gets score 0 for it — HuRef's code
silently skips such parameters; we count the miss. A student distilled from a base into a fresh initialisation
is a negative of its teacher (kind `distilled_student`: it shares the teacher's function, not its weights).
`zoo` records exactly which models were scored (`model_names`) and, for a partial zoo (`partial`: some planned
models not built, or a derivative whose base is absent), which are `missing`. `units` lists, for the derivatives that change heads or experts (width pruning, MoE upcycling) and for the
students, the head and expert pairs hubguard found per layer and what whole-matrix attention terms alone
would score. With --write-calibration, the null of hubguard's z is re-estimated from this run's negatives
and written (default: hubguard/lineage/calibration_v<FINGERPRINT_VERSION>.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NORMAL_Z_1E4 = 3.719  # one-sided normal tail p = 1e-4
INDEPENDENT_Z = 2.0
UNIT_KINDS = ("width_pruning_distilled", "moe_upcycling", "distilled_student")


def bases_of(entry: dict[str, Any]) -> set[str]:
    base = entry.get("base")
    return set(base) if isinstance(base, list) else {base} if base else set()


def auc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def method_summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    pos = [r[key] for r in rows if r["positive"]]
    neg = [r[key] for r in rows if not r["positive"]]
    mu, sd = statistics.fmean(neg), statistics.pstdev(neg) or 1.0
    max_neg = max(neg)
    by_kind: dict[str, dict[str, Any]] = {}
    for r in rows:
        kind = r["kind"] if r["positive"] else r.get("negative_kind") or (
            "independent_seed" if r["same_family"] else "unrelated")
        slot = by_kind.setdefault(kind, {"positive": r["positive"], "scores": [], "pairs": []})
        slot["scores"].append(round(r[key], 2))
        slot["pairs"].append(f"{r['base']} -> {r['model']}")
    for slot in by_kind.values():
        s = slot["scores"]
        slot.update(min=min(s), mean=round(statistics.fmean(s), 2), max=max(s), detected=(sum(x > max_neg for x in s) if slot["positive"] else None))
    return {
        "auc": round(auc(pos, neg), 4),
        "tpr_at_fpr0": round(sum(p > max_neg for p in pos) / len(pos), 4),
        "min_positive_score": round(min(pos), 2),
        "max_negative_score": round(max_neg, 2),
        "null_mean": round(mu, 3),
        "null_std": round(sd, 3),
        "margin_z": round((min(pos) - max_neg) / sd, 2),
        "by_kind": by_kind,
    }


def emit_json(data: dict[str, Any], *, path: Path | None) -> None:
    """Print a benchmark's JSON, and write it to `path` too when given (benchmarks/results/NAME.json)."""
    text = json.dumps(data, indent=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)


def load_zoo(zoo: Path) -> dict[str, Any]:
    """The zoo manifest; while a zoo is still being built (no zoo.json yet), the models finished so far
    (each complete model folder holds its zoo_entry.json), marked partial."""
    if (zoo / "zoo.json").is_file():
        manifest = json.loads((zoo / "zoo.json").read_text())
        names = {e["name"] for e in manifest["models"]}
        kept = [e for e in manifest["models"] if bases_of(e) <= names]
        dropped = sorted(names - {e["name"] for e in kept})
        return manifest | {"models": kept, "partial": bool(manifest.get("partial") or manifest.get("missing") or dropped),
                           "missing": list(manifest.get("missing") or []) + dropped}
    entries = []
    for f in sorted(zoo.glob("*/zoo_entry.json")):
        entry = json.loads(f.read_text())
        entry.setdefault("path", str(f.parent))
        entries.append(entry)
    if not entries:
        raise SystemExit(f"{zoo} holds no zoo: run benchmarks/zoo.py --out {zoo} first")
    names = {e["name"] for e in entries}
    entries = [e for e in entries if bases_of(e) <= names]  # a derivative needs its bases
    return {"models": entries, "root": str(zoo), "quick": False, "partial": True, "missing": None}


def zoo_extent(manifest: dict[str, Any], *, n_models: int) -> str:
    """'N models', or for a partial zoo 'partial: N of the M planned models'."""
    if not manifest.get("partial"):
        return f"{n_models} models"
    planned = manifest.get("planned")
    return f"partial: {n_models} of the {planned} planned models" if planned else f"partial: {n_models} models"


def zoo_record(manifest: dict[str, Any], *, models: dict[str, Any], bases: list[str]) -> dict[str, Any]:
    """Which models the scores come from: every scored model by name, and for a partial zoo what is missing."""
    return {
        "quick": manifest.get("quick"), "partial": bool(manifest.get("partial")), "models": len(models),
        "planned": manifest.get("planned"), "bases": bases, "model_names": list(models),
        "missing": manifest.get("missing"),
        "kinds": {k: sum(m["kind"] == k for m in models.values()) for k in sorted({m["kind"] for m in models.values()})},
    }


def whole_attention_score(a: Any, b: Any) -> float:
    """What the whole-layer attention terms alone (sums over heads, as in fingerprint v1) score for a pair:
    per B layer its best A layer, mean over the best half."""
    import math

    import torch

    from hubguard.lineage.similarity import layer_scores, shared_token_index

    ia, ib = shared_token_index(a.tokens, b.tokens)
    terms = [t for t in ("attn_qk", "attn_vo") if t in a.terms and t in b.terms]
    best = torch.stack([layer_scores(a.terms[t], b.terms[t], ia=ia, ib=ib) for t in terms]).mean(dim=0).max(dim=0).values
    k = max(1, math.ceil(len(best) / 2))
    return round(float(best.sort(descending=True).values[:k].mean()), 2)


def unit_row(name: str, *, models: dict[str, Any], base_fps: dict[str, Any], cands: dict[str, Any],
             calibration: Any) -> dict[str, Any]:
    """Head and expert provenance of one width-pruned / upcycled model (or a student) against its base (or
    teacher): per layer, the matched reference layer, heads (candidate←reference) and experts."""
    from hubguard.lineage.verify import verify

    m = models[name]
    ref = next(iter(bases_of(m)), None) or (m.get("notes") or {}).get("teacher")
    res = verify(reference=base_fps[ref], candidate=cands[name], calibration=calibration)
    fp = cands[name].fingerprint
    return {
        "model": name, "kind": m["kind"], "reference": ref, "score": res.score, "z": res.z, "verdict": res.verdict,
        "terms": res.terms, "whole_attention_score": whole_attention_score(base_fps[ref], fp),
        "heads": [max(fp.head_counts, default=0), max(base_fps[ref].head_counts, default=0)],
        "experts": [max(fp.expert_counts, default=0), max(base_fps[ref].expert_counts, default=0)],
        "layers": [{"layer": lm.layer, "match": lm.match, "score": lm.score, "reading": lm.reading,
                    "heads": [list(h) for h in lm.heads], "experts": [list(e) for e in lm.experts]} for lm in res.layers],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / "out" / "zoo")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    from hubguard import constants

    default_cal = ROOT / "hubguard" / "lineage" / f"calibration_v{constants.FINGERPRINT_VERSION}.json"
    parser.add_argument("--write-calibration", nargs="?", const=default_cal, type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from hubguard.errors import HubguardError
    from hubguard.lineage.calibration import Calibration, Null, load_calibration
    from hubguard.lineage.candidate import open_candidate
    from hubguard.lineage.verify import layer_provenance, verify_many
    from hubguard.redteam.baselines import huref_official, pcs

    manifest = load_zoo(args.zoo)
    models = {m["name"]: m for m in manifest["models"]}
    path = {n: (args.zoo / m["path"]) if not Path(m["path"]).is_absolute() else Path(m["path"]) for n, m in models.items()}
    bases = [n for n, m in models.items() if m["kind"] == "base"]
    t0 = time.perf_counter()
    from hubguard.lineage.fingerprints import compute_fingerprint

    base_fps = {n: compute_fingerprint(path[n], name=n, keep_probe=True) for n in bases}
    # every model is a candidate of the verification pipeline, its layers read through each base's embedding too
    cands = {n: open_candidate(path[n], name=n, references=list(base_fps.values())) for n in models}
    t_fp = time.perf_counter() - t0

    def safe(fn, a, b) -> float:  # noqa: ANN001
        try:
            return float(fn(path[a], path[b]).score)
        except HubguardError:
            return 0.0

    rows = []
    for b in bases:
        for m in models:
            if m == b:
                continue
            res = verify_many(references=[base_fps[b]], candidate=cands[m], calibration=load_calibration())[0]
            teacher = (models[m].get("notes") or {}).get("teacher")
            rows.append({
                "base": b, "model": m, "kind": models[m]["kind"], "positive": b in bases_of(models[m]),
                "same_family": models[m]["family"] == models[b]["family"],
                "negative_kind": "distilled_student" if teacher == b else None,
                "hubguard": res.score, "layer_scores": [lm.score for lm in res.layers],
                "huref_official": safe(huref_official, b, m), "pcs": safe(pcs, b, m),
            })

    calibration = load_calibration()
    if args.write_calibration is not None:
        neg = [r["hubguard"] for r in rows if not r["positive"]]
        neg_layers = [s for r in rows if not r["positive"] for s in r["layer_scores"]]
        overall = Null(mean=statistics.fmean(neg), std=statistics.pstdev(neg), samples=tuple(sorted(round(x, 3) for x in neg)))
        layer = Null(mean=statistics.fmean(neg_layers), std=statistics.pstdev(neg_layers))
        derivative_z = max(NORMAL_Z_1E4, overall.z(max(neg)) + 1.0)
        calibration = Calibration(
            overall=overall, layer=layer, derivative_z=round(derivative_z, 3), independent_z=INDEPENDENT_Z,
            source=f"benchmarks/lineage.py --write-calibration on the zoo of benchmarks/zoo.py "
            f"({'quick' if manifest.get('quick') else 'full'}-zoo configuration, "
            f"{zoo_extent(manifest, n_models=len(models))}, {len(neg)} negative pairs)",
            method_version=constants.FINGERPRINT_VERSION,
        )
        args.write_calibration.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    for r in rows:
        r["z"] = round(calibration.overall.z(r["hubguard"]), 3)
        r["verdict"] = calibration.verdict(r["z"])

    methods = {k: method_summary(rows, k) for k in ("hubguard", "huref_official", "pcs")}
    pos_z = [r["z"] for r in rows if r["positive"]]
    neg_z = [r["z"] for r in rows if not r["positive"]]
    methods["hubguard"]["margin_z"] = round(min(pos_z) - max(neg_z), 2)
    methods["hubguard"]["min_positive_z"], methods["hubguard"]["max_negative_z"] = round(min(pos_z), 2), round(max(neg_z), 2)
    methods["hubguard"]["verdicts"] = {
        "positives": {v: sum(r["verdict"] == v for r in rows if r["positive"]) for v in ("derivative", "inconclusive", "independent")},
        "negatives": {v: sum(r["verdict"] == v for r in rows if not r["positive"]) for v in ("derivative", "inconclusive", "independent")},
    }

    multi = []
    for n, m in models.items():
        if len(bases_of(m)) > 1 or m["kind"] in {"frankenmerge", "layer_pruning", "layer_duplication"} or m["kind"].startswith("merge_"):
            refs = {b: base_fps[b] for b in bases if models[b]["family"] == m["family"]}
            prov = layer_provenance(candidate=cands[n], references=refs, calibration=calibration)
            found = sorted({p.source for p in prov if p.source})
            truth = m.get("layer_sources")
            multi.append({
                "model": n, "kind": m["kind"], "declared_bases": sorted(bases_of(m)), "bases_found": found,
                "all_bases_found": set(found) == bases_of(m),
                "layer_map": [{"layer": p.layer, "source": p.source, "match": p.match, "score": p.score} for p in prov],
                "layer_map_correct": None if not truth else all(
                    p.source == t.get("base") and p.match == t.get("base_layer") for p, t in zip(prov, truth, strict=False)
                ),
            })

    units = [unit_row(n, models=models, base_fps=base_fps, cands=cands, calibration=calibration)
             for n, m in models.items() if m["kind"] in UNIT_KINDS]
    out = {
        "pairs": len(rows),
        "positives": sum(r["positive"] for r in rows),
        "negatives": sum(not r["positive"] for r in rows),
        "zoo": zoo_record(manifest, models=models, bases=bases),
        "methods": methods,
        "multi_base": multi,
        "units": units,
        "calibration": {k: v for k, v in calibration.to_dict().items() if k != "null"} | {
            "null_overall": {"mean": round(calibration.overall.mean, 3), "std": round(calibration.overall.std, 3)},
        },
        "fingerprint_seconds": round(t_fp, 2),
        "pairs_detail": [{k: v for k, v in r.items() if k != "layer_scores"} for r in rows],
    }
    emit_json(out, path=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
