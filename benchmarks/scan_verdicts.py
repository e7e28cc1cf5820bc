"""Parts of benchmarks/scan.py: verdict-log queries over a synthetic 10^7-row log, and the scan projection.

The synthetic log is shaped like a year of a hub-wide scan: 27k rows a day in time order, ~3M distinct repos,
2,000 bases matched with heavy-tailed popularity (a few bases take most rows), 30% derivatives, 2% flagged. It is
written as Parquet segments by the product's own `VerdictStore` and indexed by it; the queries are the product's
(`Registry.derivatives_of`, `Registry.flagged(since=...)`, `Registry.verdicts(repo_id=...)`), next to the same
queries with pyarrow alone over the segments (no index) for comparison.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SEGMENT_ROWS = 1_000_000


def _timed(fn, repeat: int = 5) -> tuple[float, float, Any]:  # noqa: ANN001
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(sorted(times)[len(times) // 2], 2), round(max(times), 2), out


def _segment(rng, start: int, n: int, *, total: int, t0: float) -> Any:  # noqa: ANN001
    import numpy as np
    import pyarrow as pa

    from hubguard.registry import schema

    seq = np.arange(start, start + n)
    secs = (t0 + seq * (365 * 86400 / total)).astype("datetime64[s]")
    logged = pa.array(np.char.add(np.datetime_as_string(secs, unit="s"), "+00:00"))
    repo_ix = rng.integers(0, 3_000_000, n)
    repos = pa.array(np.char.add(np.char.add("user", (repo_ix % 400_000).astype(str)), np.char.add("/model-", repo_ix.astype(str))))
    base_ix = (rng.zipf(1.3, n) - 1) % 2000
    match = pa.array(np.char.add("base-org/model-", base_ix.astype(str)))
    derivative = rng.random(n) < 0.3
    flagged = derivative & (rng.random(n) < 0.067)
    cols = {
        "schema_version": pa.array(np.full(n, 1, np.int32)), "logged_at": logged, "repo_id": repos,
        "revision": pa.array(np.char.mod("%040x", repo_ix * 7919 + seq)), "match": match,
        "score": pa.array(np.where(derivative, 70 + 30 * rng.random(n), 10 * rng.random(n))),
        "z": pa.array(np.where(derivative, 20 + 20 * rng.random(n), rng.standard_normal(n))),
        "verdict": pa.array(np.where(derivative, "derivative", "independent")),
        "declared_base_model": pa.nulls(n, pa.string()), "declared_relation": pa.nulls(n, pa.string()),
        "flagged": pa.array(flagged), "reason": pa.array(np.where(flagged, "undeclared derivative", None)),
        "source": pa.array(np.full(n, "scan")), "logged_by": pa.array(np.full(n, "bench")),
        "details": pa.array(np.full(n, '{"status": "ok"}')),
    }
    return pa.table({c: cols[c].cast(schema.arrow_schema(schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT).field(c).type)
                     for c in schema.VERDICT_COLUMNS}, schema=schema.arrow_schema(schema.VERDICT_COLUMNS, fmt=schema.VERDICTS_FORMAT))


def verdict_queries(*, rows: int, work: Path) -> dict[str, Any]:
    import contextlib

    import numpy as np
    import pyarrow.dataset as pads

    from hubguard.registry import Registry
    from hubguard.registry.verdict_store import VerdictStore
    from hubguard.registry.verdicts import has_verdict

    reg = Registry(work / "registry")
    reg.make_writable()
    store = VerdictStore(reg)
    rng = np.random.default_rng(0)
    t0 = float(np.datetime64("2026-01-01T00:00:00", "s").astype(int))
    t = time.perf_counter()
    probe = None
    for start in range(0, rows, SEGMENT_ROWS):
        table = _segment(rng, start, min(SEGMENT_ROWS, rows - start), total=rows, t0=t0)
        store.write_segment(table, start)
        probe = probe or (table.column("repo_id")[123].as_py(), table.column("revision")[123].as_py())
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.closing(store.connect()) as conn:
        store.sync(conn)
    index_s = time.perf_counter() - t
    since = str(np.datetime_as_string(np.datetime64(int(t0 + 363.5 * 86400), "s"), unit="s")) + "+00:00"
    counts = {r["match"]: r["n"] for r in store.query('SELECT "match", count(*) AS n FROM rows GROUP BY "match"')}
    typical = sorted(counts, key=counts.get)[len(counts) * 9 // 10]  # a base at the 90th percentile of popularity
    files = sorted(str(s.path) for s in store.segments())
    queries = {
        f"derivatives of X ({counts[typical]:,} rows for X)": lambda: reg.derivatives_of(typical),
        "flagged since D (the last 1.5 days)": lambda: reg.flagged(since=since),
        "verdicts of one repo": lambda: reg.verdicts(repo_id=probe[0]),
        "has a verdict (repo, revision)": lambda: has_verdict(reg, repo_id=probe[0], revision=probe[1]),
    }
    arrow = {
        "flagged since D, pyarrow over the segments": lambda: pads.dataset(files).to_table(
            columns=["logged_at", "repo_id", "match", "reason"],
            filter=(pads.field("flagged")) & (pads.field("logged_at") >= since)),
        "derivatives of X, pyarrow over the segments": lambda: pads.dataset(files).to_table(
            columns=["repo_id", "verdict", "score", "z", "logged_at"], filter=pads.field("match") == typical),
    }
    out: dict[str, Any] = {"rows": rows, "segments": len(files), "write_segments_s": round(write_s, 1),
                           "index_build_s": round(index_s, 1),
                           "parquet_mb": round(sum(Path(f).stat().st_size for f in files) / 2**20, 1),
                           "index_mb": round(store.index_path().stat().st_size / 2**20, 1), "queries": []}
    for name, fn in {**queries, **arrow}.items():
        p50, worst, res = _timed(fn, repeat=5 if "pyarrow" not in name else 3)
        n = res.num_rows if hasattr(res, "num_rows") else (len(res) if isinstance(res, list) else int(bool(res)))
        out["queries"].append({"query": name, "indexed": "pyarrow" not in name, "p50_ms": p50, "max_ms": worst, "result_rows": n})
        print(out["queries"][-1], flush=True)
    return out


def projection(*, throughput: dict[str, Any], remote: dict[str, Any]) -> dict[str, Any]:
    """Hours and HTTP requests for 1e5 and 1e6 repos under the Hub's published 5-minute budgets (90% used)."""
    from hubguard.hooks.scan.limiter import PLANS, WINDOW_S

    layouts = throughput["runs"]["ray, 2 workers"]["per_repo"]
    per_repo = next(v for k, v in layouts.items() if "shards" in k)  # the layout of large models
    seven_b = remote["models"]["7b"]["http"]
    rows = []
    for plan in ("free", "pro"):
        budgets = {k: 0.9 * v for k, v in PLANS[plan].items()}
        per_hour = {b: 3600 * budgets[b] / WINDOW_S / max(per_repo[b], 1e-9) for b in ("api", "resolvers")}
        bound = min(per_hour, key=per_hour.get)
        for n in (100_000, 1_000_000):
            rows.append({"plan": plan, "repos": n, "bound_by": bound, "repos_per_hour": round(per_hour[bound]),
                         "hours": round(n / per_hour[bound], 1),
                         "hub_requests": round(n * (per_repo["api"] + per_repo["resolvers"])),
                         "cdn_requests": round(n * per_repo["cdn"]),
                         "bytes_tb_at_7b": round(n * seven_b["bytes_read"] / 1e12, 1),
                         "worker_hours_at_7b": round(n * seven_b["wall_s"] / 3600)})
    return {"per_repo_requests": per_repo, "seven_b_per_repo": {"bytes": seven_b["bytes_read"], "wall_s": seven_b["wall_s"]},
            "rows": rows}
