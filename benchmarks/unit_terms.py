"""Per-head / per-expert terms: their cost and the accuracy their sketches cost.

    python benchmarks/unit_terms.py [--zoo DIR] [--out FILE] [--repeats N]

1. Time per dense layer of fingerprint v1's work (the whole-layer terms, standardised) and of v2's (the same,
   plus head sketches and the FFN's expert sketch), on random canonical layers of three shapes: the zoo's
   tiny Llama, a 1B-like and a 7B-like layer (n = 288 tokens). Also the bytes a layer adds to a fingerprint,
   and how a 32-layer, 32-head 7B-like reference is stored in the registry (16 MB budget).
2. Sketch accuracy on zoo pairs: per matched head pair, the exact cosine of the two standardised [n, n] head
   terms (formed in full here) against the estimate from the stored sketches (copy 1); and the layer's
   matched-head score exact vs sketched. Pairs: a base against its SFT, its width-pruned + distilled
   derivative, and an independent seed.

Prints JSON (also written to --out, default benchmarks/results/unit_terms.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPES = {  # hidden, heads, kv heads, ffn
    "zoo_llama": (128, 4, 2, 344),
    "1b_like": (2048, 32, 4, 5632),
    "7b_like": (4096, 32, 32, 11008),
}
N_TOKENS = 288
PAIRS = (("llama-s0", "llama-s0-sft"), ("llama-s0", "llama-s0-width"), ("llama-s0", "llama-s1"))


def random_layer(*, hidden: int, heads: int, kv: int, ffn: int, seed: int) -> Any:
    import torch

    from hubguard.weights.canonical import CanonicalExpert, CanonicalLayer

    g = torch.Generator().manual_seed(seed)
    hd = hidden // heads
    w = lambda *s: torch.randn(*s, generator=g) / s[-1] ** 0.5  # noqa: E731
    k, v = w(kv, hd, hidden).repeat_interleave(heads // kv, 0), w(kv, hd, hidden).repeat_interleave(heads // kv, 0)
    return CanonicalLayer(index=0, q=w(heads, hd, hidden), k=k, v=v, o=w(heads, hidden, hd), ffn_type="gated",
                          experts=[CanonicalExpert(up=w(ffn, hidden), down=w(hidden, ffn), gate=w(ffn, hidden))],
                          kv_heads=kv)


def v1_standardise(m: Any, rank: int = 8) -> Any:
    """v1's standardisation: a float64 SVD, the leading components zeroed, the matrix rebuilt, z-scored."""
    import torch

    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    s[..., :rank] = 0
    m = ((u * s[..., None, :]) @ vh).to(m.dtype)
    off = ~torch.eye(m.shape[-1], dtype=torch.bool)
    vals = m[..., off]
    return (m - vals.mean()) / vals.std().clamp_min(1e-12)


def v1_layer_terms(layer: Any, x: Any) -> dict[str, Any]:
    """Fingerprint v1's per-layer work, as v1 computed it (whole-matrix sums, then its standardisation)."""
    H, hd, d = layer.q.shape
    wq, wk, wv = layer.q.reshape(H * hd, d), layer.k.reshape(H * hd, d), layer.v.reshape(-1, d)
    wo = layer.o.permute(1, 0, 2).reshape(d, -1)
    e, xt = layer.dense, x.t()
    unit_weight = (e.gate * e.up).sum(dim=1)
    terms = {"attn_qk": (x @ wq.t()) @ (x @ wk.t()).t(), "attn_vo": ((x @ wv.t()) @ wo.t()) @ xt,
             "ffn_up": ((x @ e.up.t()) @ e.down.t()) @ xt,
             "ffn_gate": (((x @ e.gate.t()) * unit_weight[None, :]) @ e.down.t()) @ xt}
    return {t: v1_standardise(m) for t, m in terms.items()}


def _interleaved_seconds(first: Any, second: Any, repeats: int) -> tuple[float, float]:
    """Median seconds of two functions run alternately (so load on a shared machine hits both alike)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def time_layers(repeats: int) -> dict[str, Any]:
    import torch

    from hubguard.lineage.readout import read_layer, token_grid

    grid = token_grid(token_set="v1", positions=torch.arange(N_TOKENS))
    out = {}
    for name, (hidden, heads, kv, ffn) in SHAPES.items():
        layer = random_layer(hidden=hidden, heads=heads, kv=kv, ffn=ffn, seed=0)
        x = torch.randn(N_TOKENS, hidden, generator=torch.Generator().manual_seed(1))
        v1, v2 = _interleaved_seconds(lambda layer=layer, x=x: v1_layer_terms(layer, x),
                                      lambda layer=layer, x=x: read_layer(layer, x=x, grid=grid), repeats)
        r = read_layer(layer, x=x, grid=grid)
        unit_values = sum(m.numel() for m in r.heads.values()) + sum(m.numel() for m in r.experts.values())
        whole_values = sum(m.numel() for m in r.whole.values())
        out[name] = {
            "hidden": hidden, "heads": heads, "kv_heads": kv, "ffn": ffn, "v1_seconds": round(v1, 4),
            "v2_seconds": round(v2, 4), "v2_over_v1": round(v2 / v1, 3),
            "bytes_per_layer_float16": {"whole_terms": 2 * whole_values, "unit_sketches": 2 * unit_values},
        }
    return out


def registry_entry(*, layers: int, heads: int, hidden: int) -> dict[str, Any]:
    """How a reference fingerprint of a dense model of this shape is stored in the registry (16 MB budget)."""
    import torch

    from hubguard.lineage.fingerprints import Fingerprint
    from hubguard.lineage.unit_terms import UNIT_COPIES, UNIT_RANK
    from hubguard.registry.verification import DEFAULT_BUDGET_BYTES, _payload_bytes, plan_storage

    unit = (UNIT_COPIES, UNIT_RANK, UNIT_RANK)
    fp = Fingerprint(
        tokens=tuple(f"t{i}" for i in range(N_TOKENS)), layers=tuple(range(layers)), model={},
        terms={t: torch.zeros(layers, N_TOKENS, N_TOKENS) for t in ("attn_qk", "attn_vo", "ffn_up", "ffn_gate")},
        heads={t: torch.zeros(layers, heads, *unit) for t in ("attn_qk", "attn_vo")}, head_counts=(heads,) * layers,
        experts={t: torch.zeros(layers, 1, *unit) for t in ("ffn_up", "ffn_gate")}, expert_shared=((False,),) * layers,
        probe=torch.zeros(N_TOKENS, hidden),
    )
    dtype, keep = plan_storage(fp)
    return {"layers": layers, "heads": heads, "hidden": hidden, "budget_bytes": DEFAULT_BUDGET_BYTES, "storage": dtype,
            "layers_kept": len(keep), "bytes": _payload_bytes(fp, itemsize=1 if dtype == "float8" else 2, n_layers=len(keep))}


def exact_head_terms(fp_layer: Any, x: Any, *, shared_rank: int) -> dict[str, Any]:
    """[H, n, n] standardised head terms, formed in full (what the sketches stand for)."""
    import torch

    from hubguard.lineage.terms import expand_heads, head_factors

    out = {}
    for t, factors in head_factors(fp_layer, x).items():
        a, b = expand_heads(*factors)
        m = torch.einsum("hnc,hmc->hnm", a.double(), b.double())
        u, s, vh = torch.linalg.svd(m)
        s[:, :shared_rank] = 0
        m = (u * s[:, None, :]) @ vh
        off = ~torch.eye(m.shape[-1], dtype=torch.bool)
        m = m - m[:, off].mean(dim=-1)[:, None, None]
        out[t] = torch.where(off, m, torch.zeros_like(m))
    return out


def read_model(folder: Path) -> dict[str, Any]:
    import torch

    from hubguard.lineage.readout import token_grid
    from hubguard.lineage.terms import probe_rows
    from hubguard.lineage.tokens import load_vocabulary, token_rows, token_set_index
    from hubguard.weights.model import open_model
    from hubguard.weights.plan import ReadPlan

    w = open_model(folder)
    keys, rows = token_rows(load_vocabulary(w.store), token_set="v1", vocab_rows=w.vocab_rows, source=w.source)
    plan = ReadPlan(layers=tuple(range(w.arch.num_layers)), mode="full")
    x = probe_rows(w.embedding_rows(rows, plan=plan), layer_norm=w.layer_norm)
    grid = token_grid(token_set="v1", positions=torch.tensor(token_set_index(keys, token_set="v1")))
    return {"keys": keys, "x": x, "grid": grid, "layers": [w.reader.read(i) for i in plan.layers]}


def sketch_accuracy(zoo: Path) -> dict[str, Any]:
    import torch

    from hubguard.lineage.matching import match_heads
    from hubguard.lineage.terms import head_factors
    from hubguard.lineage.unit_terms import HEAD_SHARED_RANK, head_sketches

    def cos(a: Any, b: Any) -> float:
        return float(100 * (a.flatten() @ b.flatten()) / (a.norm() * b.norm()))

    results = {}
    cache: dict[str, Any] = {}
    for ref, cand in PAIRS:
        if not ((zoo / ref).is_dir() and (zoo / cand).is_dir()):
            results[f"{ref} -> {cand}"] = {"skipped": "not in the zoo"}
            continue
        for n in (ref, cand):
            cache.setdefault(n, read_model(zoo / n))
        a, b = cache[ref], cache[cand]
        if a["keys"] != b["keys"]:
            results[f"{ref} -> {cand}"] = {"skipped": "token sets differ"}
            continue
        errors, layer_rows = [], []
        for i, (la, lb) in enumerate(zip(a["layers"], b["layers"])):
            sa = head_sketches(head_factors(la, a["x"]), grid=a["grid"])
            sb = head_sketches(head_factors(lb, b["x"]), grid=b["grid"])
            ones = lambda s: torch.ones(1, next(iter(s.values())).shape[0], dtype=torch.bool)  # noqa: E731
            m = match_heads({t: v[None] for t, v in sa.items()}, {t: v[None] for t, v in sb.items()},
                            valid_a=ones(sa), valid_b=ones(sb))
            ea = exact_head_terms(la, a["x"], shared_rank=HEAD_SHARED_RANK)
            eb = exact_head_terms(lb, b["x"], shared_rank=HEAD_SHARED_RANK)
            exact_pairs = []
            for (hb, ha), sketched in zip(m.pairs[0, 0].tolist(), m.pair_scores[0, 0].tolist()):
                exact = statistics.fmean(cos(ea[t][ha], eb[t][hb]) for t in sa)
                exact_pairs.append(exact)
                errors.append(sketched - exact)
            layer_rows.append({"layer": i, "matched_heads": m.pairs[0, 0].tolist(),
                               "sketched": round(float(m.score[0, 0]), 2), "exact": round(statistics.fmean(exact_pairs), 2)})
        results[f"{ref} -> {cand}"] = {
            "layers": layer_rows, "head_pairs": len(errors),
            "mean_abs_error": round(statistics.fmean(abs(e) for e in errors), 2),
            "max_abs_error": round(max(abs(e) for e in errors), 2),
            "mean_error": round(statistics.fmean(errors), 2),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / "out" / "zoo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "unit_terms.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from lineage import emit_json

    from hubguard.lineage.unit_terms import HEAD_SHARED_RANK, UNIT_COPIES, UNIT_RANK

    torch.set_num_threads(args.threads)
    out = {
        "settings": {"n_tokens": N_TOKENS, "sketch_rank": UNIT_RANK, "sketch_copies": UNIT_COPIES,
                     "head_shared_rank": HEAD_SHARED_RANK, "threads": args.threads, "repeats": args.repeats},
        "time_per_layer": time_layers(args.repeats),
        "registry_entry_7b_like": registry_entry(layers=32, heads=32, hidden=4096),
        "sketch_accuracy": sketch_accuracy(args.zoo),
    }
    emit_json(out, path=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
