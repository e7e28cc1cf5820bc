"""Registry benchmark: search latency and recall of the ANN stage, bytes per entry, build time, peak memory,
and score error of compact verification data. Prints JSON.

    .venv/bin/python benchmarks/registry.py --sizes 10000 100000 1000000

Search stage: synthetic sketches (clustered unit vectors: families of bases with close derivatives), queries
are perturbed members (what a derivative upload looks like). recall@10 = overlap of the index's top 10 with
exact search over the same float16 sketches. Verification data: real fingerprints of tiny models built
with transformers (a 32-layer llama and a noisy copy of it, an independent seed), full vs float8 vs
layer-capped storage, scored with the lineage core's `compare`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.factory builds the real tiny models


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, *, dim: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_centres = max(10, n // 10)
    out = np.empty((n, dim), dtype=np.float16)
    centres = rng.standard_normal((n_centres, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = centres[rng.integers(0, n_centres, m)] + 0.7 * rng.standard_normal((m, dim), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_search(n: int, *, queries: int, cache: Path) -> dict:
    from hubguard.registry.index import SketchSearcher, exact_search

    rng = np.random.default_rng(1)
    mat = synthetic(n)
    names = [f"m{i}" for i in range(n)]
    t0 = time.perf_counter()
    searcher = SketchSearcher(mat, names=names, cache_dir=cache / f"idx{n}")
    build_s = time.perf_counter() - t0
    qs = mat[rng.integers(0, n, queries)].astype(np.float32) + 0.02 * rng.standard_normal((queries, mat.shape[1]), dtype=np.float32)
    lat, rec = [], []
    for q in qs:
        t = time.perf_counter()
        rows, _ = searcher.search(q, 10)
        lat.append((time.perf_counter() - t) * 1e3)
        if searcher.kind != "exact":
            ex, _ = exact_search(mat, q, 10)
            rec.append(len(set(ex.tolist()) & set(rows.tolist())) / 10)
    index_bytes = 0 if searcher.ivf is None else searcher.ivf.centroids.nbytes + searcher.ivf.order.nbytes
    return {
        "entries": n, "stage": searcher.kind, "search_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "search_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "recall_at_10": round(float(np.mean(rec)), 4) if rec else 1.0,
        "index_build_s": round(build_s, 2),
        "sketch_bytes_per_entry": mat.shape[1] * 2, "index_bytes_per_entry": round(index_bytes / n, 2),
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def bench_registry_io(n: int, tmp: Path) -> dict:
    """Bytes per entry on disk and the time to write/read an entries table of n rows (no verification data)."""
    from hubguard.registry import schema

    mat = synthetic(n, seed=2)
    rows = [{"schema_version": 1, "name": f"org/model-{i}", "repo_id": f"org/model-{i}", "family": "llama",
             "license": "apache-2.0", "parameters": 7_000_000_000, "method": "hubguard-invariants", "method_version": 1,
             "added_at": "2026-01-01T00:00:00+00:00", "fingerprint_file": f"fingerprints/model-{i}.safetensors", "sketch": mat[i]}
            for i in range(n)]
    t = time.perf_counter()
    table = schema.table_from_rows(rows, columns=schema.ENTRY_COLUMNS, fmt=schema.ENTRIES_FORMAT)
    path = tmp / f"entries{n}.parquet"
    schema.write_table_atomic(path, table)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    back = schema.read_table(path, columns=schema.ENTRY_COLUMNS, fmt=schema.ENTRIES_FORMAT)
    schema.sketch_matrix(back.column("sketch"))
    read_s = time.perf_counter() - t
    return {"entries_file_bytes_per_entry": round(path.stat().st_size / n, 1), "entries_write_s": round(write_s, 2),
            "entries_read_s": round(read_s, 2)}


def bench_verification(tmp: Path) -> dict:
    """Score error of compact verification data vs the full fingerprint, on real fingerprints."""
    import torch
    import transformers as T

    from hubguard.lineage.compare import compare_fingerprints
    from hubguard.lineage.fingerprint import compute_fingerprint
    from hubguard.registry.verification import load_verification, save_verification
    from tests.factory import build_model, save_with_tokenizer, train_bpe_tokenizer

    torch.set_num_threads(1)
    tok = train_bpe_tokenizer(tmp / "tok")
    cfg = T.LlamaConfig(hidden_size=64, num_hidden_layers=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, vocab_size=3000, tie_word_embeddings=False)
    folders = {}
    for name, seed in (("base", 0), ("indep", 1)):
        folders[name] = save_with_tokenizer(build_model(cfg, seed=seed), tmp / name, tokenizer_json=tok)
    deriv = build_model(cfg, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in deriv.parameters():
            if p.dim() == 2:
                p.add_(0.004 * torch.randn(p.shape, generator=g))
    folders["deriv"] = save_with_tokenizer(deriv, tmp / "deriv", tokenizer_json=tok)
    fps = {k: compute_fingerprint(v) for k, v in folders.items()}
    out = {"layers": len(fps["base"].layers), "tokens": len(fps["base"].tokens), "terms": sorted(fps["base"].terms)}
    per_layer_term = len(fps["base"].tokens) ** 2
    variants = {"float16": dict(storage="float16"), "float8": dict(storage="float8"),
                "float8_8MB": dict(storage="auto", budget_bytes=8 * 1024 * 1024),
                "float8_4MB": dict(storage="auto", budget_bytes=4 * 1024 * 1024)}
    for label, kw in variants.items():
        path, desc = save_verification(fps["base"], tmp / f"{label}.safetensors", **kw)
        small = load_verification(path)
        errs = {}
        for other in ("deriv", "indep"):
            full = compare_fingerprints(a=fps["base"], b=fps[other])
            got = compare_fingerprints(a=small, b=fps[other])
            errs[other] = {"full_score": full.score, "score": got.score, "abs_error": round(abs(full.score - got.score), 3),
                           "verdict_same": full.verdict == got.verdict}
        out[label] = {"storage": desc, "bytes": path.stat().st_size, **errs}
    out["float16_bytes_for_32_layers_4_terms"] = 32 * 4 * per_layer_term * 2
    out["float8_bytes_for_32_layers_4_terms"] = 32 * 4 * per_layer_term
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-verification", action="store_true")
    args = ap.parse_args()
    result: dict = {"search": [], "io": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_verification:
            result["verification"] = bench_verification(tmp)
        for n in args.sizes:
            result["search"].append(bench_search(n, queries=args.queries, cache=tmp))
            result["io"].append({"entries": n, **bench_registry_io(n, tmp)})
            print(json.dumps(result["search"][-1]), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
