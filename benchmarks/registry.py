"""Registry benchmark: search latency and recall of the ANN stage, bytes per entry, build time, peak memory,
and score error of compact verification data. Prints JSON.

    .venv/bin/python benchmarks/registry.py --sizes 10000 100000 1000000

Writes the JSON to benchmarks/results/registry.json too. Each size runs in its own process (clean peak memory).

Search stage: synthetic sketches shaped like a registry (`synthetic`: bases, derivatives at cosine 0.5-0.95 to
their base with heavy-tailed popularity, half background independent models at cosine ~0); queries are new
derivatives of bases in the index. recall_at_10 = overlap of the searcher's top 10 with exact search over the
same float16 sketches (every one of the 10, noise-level entries included); recall_at_10_related counts only
exact neighbours with cosine >= 0.3; base_in_top_10 = the query's base is returned. Verification data: real fingerprints of tiny models built
with transformers (a 32-layer llama and a noisy copy of it, an independent seed), full vs float8 vs
layer-capped storage, scored with the lineage core's `compare`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.factory builds the real tiny models


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, *, dim: int = 512, seed: int = 0, bases: float = 0.05,
              derivatives: float = 0.45) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float16 [n, dim] unit sketches shaped like a real registry, row of each base, float32 base sketches).

    5% bases; 45% derivatives of them at cosine U(0.5, 0.95) to their base, bases drawn with heavy-tailed
    (Pareto) popularity, so a few bases have hundreds of derivatives and most have a handful or none; 50%
    background independent models (random unit vectors, cosine ~0 to everything). Rows are shuffled.
    """
    rng = np.random.default_rng(seed)
    nb, nd = max(1, int(n * bases)), int(n * derivatives)
    base = rng.standard_normal((nb, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    popularity = rng.pareto(1.2, nb) + 1
    parent = rng.choice(nb, size=nd, p=popularity / popularity.sum())
    out = np.empty((n, dim), dtype=np.float16)
    out[:nb] = base
    for s in range(0, n - nb, 65536):
        m = min(65536, n - nb - s)
        r = rng.standard_normal((m, dim), dtype=np.float32)
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        if s < nd:  # derivative rows (the chunk may run past them into background rows)
            j = min(m, nd - s)
            c = rng.uniform(0.5, 0.95, j).astype(np.float32)[:, None]
            x = c * base[parent[s : s + j]] + np.sqrt(1 - c * c) * r[:j]
            r[:j] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out[nb + s : nb + s + m] = r
    perm = rng.permutation(n)
    where = np.empty(n, dtype=np.int64)
    where[perm] = np.arange(n)  # row of each original entry after the shuffle
    return out[perm], np.ascontiguousarray(where[:nb]), base


def derivative_queries(base: np.ndarray, base_rows: np.ndarray, count: int, *, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """New derivatives (not in the index) of uniformly chosen bases: (queries [count, dim], row of their base)."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, base.shape[0], count)
    c = rng.uniform(0.5, 0.95, count).astype(np.float32)[:, None]
    r = rng.standard_normal((count, base.shape[1]), dtype=np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    q = c * base[pick] + np.sqrt(1 - c * c) * r
    return q / np.linalg.norm(q, axis=1, keepdims=True), base_rows[pick]


def exact_top(mat: np.ndarray, qs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for all queries at once: (rows [Q, k], cosines [Q, k]) by a chunked float32 scan."""
    rows = np.zeros((qs.shape[0], 0), dtype=np.int64)
    sims = np.zeros((qs.shape[0], 0), dtype=np.float32)
    for s in range(0, mat.shape[0], 65536):
        chunk = qs @ mat[s : s + 65536].astype(np.float32).T  # [Q, chunk]
        part = np.argpartition(-chunk, min(k, chunk.shape[1]) - 1, axis=1)[:, :k]
        rows = np.concatenate([rows, part + s], axis=1)
        sims = np.concatenate([sims, np.take_along_axis(chunk, part, 1)], axis=1)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        rows, sims = np.take_along_axis(rows, top, 1), np.take_along_axis(sims, top, 1)
    return rows, sims


RELATED = 0.3  # cosine above the noise ceiling of 10⁶ random 512-d sketches (max ≈ 0.22)


def bench_search(n: int, *, queries: int, cache: Path) -> dict:
    from hubguard.registry.index import SketchSearcher

    t0 = time.perf_counter()
    mat, base_rows, base = synthetic(n)
    gen_s = time.perf_counter() - t0
    names = [f"m{i}" for i in range(n)]
    qs, q_base = derivative_queries(base, base_rows, queries)
    del base
    t0 = time.perf_counter()
    searcher = SketchSearcher(mat, names=names, cache_dir=cache / f"idx{n}")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = SketchSearcher(mat, names=names, cache_dir=cache / f"idx{n}")
    load_s = time.perf_counter() - t0
    assert cached.kind == searcher.kind and (searcher.kind == "exact" or cached.loaded_from_cache)
    del cached
    truth, truth_sims = exact_top(mat, qs, 10)
    lat, rec, rel, base_hit = [], [], [], []
    for q, ex, ex_sims, b in zip(qs, truth, truth_sims, q_base):
        t = time.perf_counter()
        rows, _ = searcher.search(q, 10)
        lat.append((time.perf_counter() - t) * 1e3)
        got = set(rows.tolist())
        rec.append(len(set(ex.tolist()) & got) / 10)
        related = [int(r) for r, s in zip(ex, ex_sims) if s >= RELATED]
        if related:
            rel.append(len(set(related) & got) / len(related))
        base_hit.append(int(b) in got)
    sketch_bytes = mat.shape[1] * 2
    return {
        "entries": n, "stage": searcher.kind, "queries": queries,
        "search_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "search_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "recall_at_10": round(float(np.mean(rec)), 4),
        "recall_at_10_related": round(float(np.mean(rel)), 4) if rel else None,
        "base_in_top_10": round(float(np.mean(base_hit)), 4),
        "exact_top10_noise_share": round(float(np.mean(truth_sims < RELATED)), 3),
        "index_build_s": round(build_s, 2), "index_load_from_cache_s": round(load_s, 2),
        "index_file_bytes": (searcher.cache_path.stat().st_size
                             if searcher.cache_path is not None and searcher.cache_path.exists() else 0),
        "sketch_bytes_per_entry": sketch_bytes,
        "index_bytes_per_entry": round(searcher.index_bytes / n, 2),
        "search_bytes_per_entry": round(sketch_bytes + searcher.index_bytes / n, 2),
        "synthetic_data_s": round(gen_s, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def bench_registry_io(n: int, tmp: Path) -> dict:
    """Bytes per entry on disk and the time to write/read an entries table of n rows (no verification data)."""
    import pyarrow as pa

    from hubguard.registry import schema

    mat = synthetic(n, seed=2)[0]
    cols = {"schema_version": [1] * n, "name": [f"org/model-{i}" for i in range(n)], "family": ["llama"] * n,
            "license": ["apache-2.0"] * n, "parameters": [7_000_000_000] * n, "method": ["hubguard-invariants"] * n,
            "method_version": [1] * n, "added_at": ["2026-01-01T00:00:00+00:00"] * n,
            "fingerprint_file": [f"fingerprints/model-{i}.safetensors" for i in range(n)]}
    cols["repo_id"] = cols["name"]
    t = time.perf_counter()
    # column-wise (10⁶ row dicts would take ~10 GB); the same schema and values table_from_rows writes
    arrow = schema.arrow_schema(schema.ENTRY_COLUMNS, fmt=schema.ENTRIES_FORMAT)
    table = pa.Table.from_arrays(
        [schema.sketch_array(mat, dim=mat.shape[1]) if f.name == "sketch" else
         pa.array(cols.get(f.name, [None] * n), type=f.type) for f in arrow], schema=arrow)
    del mat, cols
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

    from hubguard.lineage.comparison import compare_fingerprints
    from hubguard.lineage.fingerprints import compute_fingerprint
    from hubguard.registry.verification import load_verification, save_verification
    from tests.support.factory import build_model, save_with_tokenizer, train_bpe_tokenizer

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
    sketches = sum(m[0].numel() for group in (fps["base"].heads, fps["base"].experts) for m in group.values())
    out["unit_sketch_values_per_layer"] = sketches  # head and expert sketches (fingerprint v2)
    return out


def _child(kind: str, n: int, queries: int) -> dict:
    """Run one measurement in a fresh process so that its peak memory is its own."""
    cmd = [sys.executable, __file__, "--child", kind, str(n), "--queries", str(queries)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-verification", action="store_true")
    ap.add_argument("--only-verification", action="store_true",
                    help="re-measure only the verification data and update that part of --out (search results kept)")
    ap.add_argument("--skip-io", action="store_true", help="skip the entries-table write/read timing")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "registry.json")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        with tempfile.TemporaryDirectory() as d:
            res = bench_search(n, queries=args.queries, cache=Path(d)) if kind == "search" else {
                "entries": n, **bench_registry_io(n, Path(d)), "peak_rss_mb": round(_rss_mb(), 1)}
        print(json.dumps(res), flush=True)
        return
    if args.only_verification:
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        with tempfile.TemporaryDirectory() as d:
            result["verification"] = bench_verification(Path(d))
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["verification"], indent=2))
        return
    result: dict = {"search": [], "io": [], "machine": {"cpus": os.cpu_count(),
                                                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_verification:
            result["verification"] = bench_verification(Path(d))
    for n in args.sizes:
        result["search"].append(_child("search", n, args.queries))
        print(json.dumps(result["search"][-1]), flush=True)
        if not args.skip_io:
            result["io"].append(_child("io", n, args.queries))
            print(json.dumps(result["io"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
