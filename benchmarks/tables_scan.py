"""The tables of benchmarks/results/scan.json (benchmarks/scan.py), rendered by benchmarks/tables.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _part(d: dict[str, Any], name: str) -> dict[str, Any] | None:
    return d.get(name)


def _missing(name: str) -> str:
    return f"_(no results yet: python benchmarks/scan.py --part {name})_"


def scan_throughput(d: dict[str, Any]) -> str:
    t = _part(d, "throughput")
    if t is None:
        return _missing("throughput")
    layouts = list(next(iter(t["runs"].values()))["per_repo"])
    rows = ["| engine | repos/minute | wall s | Ray start s | " + " | ".join(
        f"{lay}: API / resolve / CDN requests, KB per repo" for lay in layouts) + " |",
        "|---|---:|---:|---:|" + "---|" * len(layouts)]
    for name, r in t["runs"].items():
        cells = [f"{p['api']} / {p['resolvers']} / {p['cdn']}, {p['bytes'] / 1024:.0f}" for p in r["per_repo"].values()]
        rows.append(f"| {name} | {r['repos_per_minute']} | {r['wall_s']} | {r['ray_init_s'] or '–'} | " + " | ".join(cells) + " |")
    m = t["machine"]
    rows += ["", f"{t['repos']} repos (undeclared derivatives, sharded derivatives, independent models) of a tiny Llama, "
             f"cold range cache each run; {m['cpus']} cores shared with other jobs (load {m['load_avg_1m']} when run)."]
    return "\n".join(rows)


def scan_bot(d: dict[str, Any]) -> str:
    b = _part(d, "bot")
    if b is None:
        return _missing("bot")
    burst = b["burst"]
    rows = ["| measure | value |", "|---|---:|",
            f"| webhook latency under a {burst['events']}-event burst ({burst['concurrency']} connections), p50 ms | {burst['p50_ms']} |",
            f"| same, p99 ms | {burst['p99_ms']} |", f"| same, max ms | {burst['max_ms']} |",
            f"| whole burst, s | {burst['burst_s']} |"]
    for sig, c in b["crashes"].items():
        rows.append(f"| {sig} mid-queue then restart: accepted / unfinished at the stop / lost / duplicate discussions | "
                    f"{c['accepted']} / {c['unfinished_when_stopped']} / {c['lost']} / {c['duplicate_discussions']} |")
    rows += ["", f"During the burst the worker was checking real commits ({burst['real_checks_queued']} queued first; "
             f"tasks at the start: {burst['tasks_at_start']})."]
    return "\n".join(rows)


def scan_memory(d: dict[str, Any]) -> str:
    m = _part(d, "memory")
    if m is None:
        return _missing("memory")
    rows = ["| commits checked | server RSS MB | worker RSS MB | range cache MB | elapsed s |", "|---:|---:|---:|---:|---:|"]
    for s in m["samples"]:
        if s["commits"] % 200 == 0 or s is m["samples"][0]:
            rows.append(f"| {s['commits']} | {s['rss_mb'].get('server', '–')} | {s['rss_mb'].get('worker', '–')} | "
                        f"{s['cache_mb']} | {s['elapsed_s']} |")
    g = m["rss_growth_mb_after_warmup"]
    rows += ["", f"Growth from commit {m['from_commits']} to {m['commits']}: server {g.get('server')} MB, worker "
             f"{g.get('worker')} MB; range cache capped at {m['cache_cap_mb']} MB; {m['verdict_rows']} verdict rows logged."]
    return "\n".join(rows)


def scan_verdicts(d: dict[str, Any]) -> str:
    v = _part(d, "verdicts")
    if v is None:
        return _missing("verdicts")
    rows = ["| query | path | p50 ms | max ms | rows returned |", "|---|---|---:|---:|---:|"]
    for q in v["queries"]:
        rows.append(f"| {q['query']} | {'SQLite index' if q['indexed'] else 'pyarrow, no index'} | {q['p50_ms']} | "
                    f"{q['max_ms']} | {q['result_rows']:,} |")
    rows += ["", f"{v['rows']:,} rows in {v['segments']} Parquet segments ({v['parquet_mb']:,} MB); the index takes "
             f"{v['index_mb']:,} MB and {v['index_build_s']} s to build from the segments."]
    return "\n".join(rows)


def scan_projection(d: dict[str, Any]) -> str:
    p = _part(d, "projection")
    if p is None:
        return _missing("projection")
    rows = ["| plan | repos | bound by | repos/hour | hours | Hub requests | CDN requests | TB read (7B repos) | "
            "worker-hours (7B repos) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in p["rows"]:
        rows.append(f"| {r['plan']} | {r['repos']:,} | {r['bound_by']} | {r['repos_per_hour']:,} | {r['hours']:,} | "
                    f"{r['hub_requests']:,} | {r['cdn_requests']:,} | {r['bytes_tb_at_7b']} | {r['worker_hours_at_7b']:,} |")
    q = p["per_repo_requests"]
    rows += ["", f"Per repo (measured, sharded layout): {q['api']} API and {q['resolvers']} resolver requests (what the Hub "
             f"counts), {q['cdn']} CDN requests; 90% of the plan's 5-minute budgets. A 7B repo reads "
             f"{p['seven_b_per_repo']['bytes'] / 1e6:.0f} MB in {p['seven_b_per_repo']['wall_s']} s (remote.json)."]
    return "\n".join(rows)


SCAN_TABLES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "scan-throughput": ("scan", scan_throughput),
    "scan-bot": ("scan", scan_bot),
    "scan-memory": ("scan", scan_memory),
    "scan-verdicts": ("scan", scan_verdicts),
    "scan-projection": ("scan", scan_projection),
}
