"""Regenerate the README's result tables from the committed benchmark JSON (never typed by hand).

    python benchmarks/tables.py            # rewrite README.md and benchmarks/README.md between the table markers
    python benchmarks/tables.py --check    # exit 1 if either is out of date

Markers: <!-- table:NAME --> ... <!-- /table:NAME -->; NAME is a key of TABLES below.

Each benchmark writes its JSON to benchmarks/results/NAME.json (the command that made it is recorded there or
in the README next to the table).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables_format import fmt as _fmt  # noqa: E402
from tables_protect import PROTECT_TABLES  # noqa: E402 - sibling modules (benchmarks/ is not a package)
from tables_protect_llm import PROTECT_LLM_TABLES  # noqa: E402
from tables_scan import SCAN_TABLES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")


def lineage_summary(d: dict[str, Any]) -> str:
    rows = ["| method | AUC | TPR @ 0 FP | min positive | max negative | margin (z) |", "|---|---|---|---|---|---|"]
    for name, m in d["methods"].items():
        rows.append(
            f"| {name} | {m['auc']:.3f} | {100 * m['tpr_at_fpr0']:.1f}% | {m['min_positive_score']:.1f} | "
            f"{m['max_negative_score']:.1f} | {m['margin_z']:.1f} |"
        )
    v = d["methods"]["hubguard"].get("verdicts", {})
    rows.append("")
    z = d["zoo"]
    extent = f"{z['models']} models"
    if z.get("partial"):
        missing = z.get("missing") or []
        extent = (f"{z['models']} models — a partial zoo ({z['models']} of the {z['planned']} planned; "
                  f"{len(missing)} not built, listed in the JSON with the scored ones)") if z.get("planned") else \
            f"{z['models']} models — a partial zoo"
    rows.append(
        f"{d['pairs']} pairs ({d['positives']} positive, {d['negatives']} negative) over {extent}; "
        f"hubguard verdicts on positives: {v.get('positives')}, on negatives: {v.get('negatives')}."
    )
    return "\n".join(rows)


def lineage_by_kind(d: dict[str, Any]) -> str:
    methods = list(d["methods"])
    kinds = list(d["methods"]["hubguard"]["by_kind"])
    head = "| pair kind | n | " + " | ".join(f"{m} min / mean" for m in methods) + " | hubguard detected |"
    rows = [head, "|" + "---|" * (len(methods) + 3)]
    for k in kinds:
        hg = d["methods"]["hubguard"]["by_kind"][k]
        cells = [f"{d['methods'][m]['by_kind'][k]['min']:.1f} / {d['methods'][m]['by_kind'][k]['mean']:.1f}" for m in methods]
        det = f"{hg['detected']}/{len(hg['scores'])}" if hg["positive"] else "(negatives)"
        rows.append(f"| {k} | {len(hg['scores'])} | " + " | ".join(cells) + f" | {det} |")
    return "\n".join(rows)


def lineage_multi_base(d: dict[str, Any]) -> str:
    rows = ["| model | kind | declared bases | bases found | per-layer map (layer ← base:layer) |", "|---|---|---|---|---|"]
    for m in d["multi_base"]:
        lm = ", ".join(f"{x['layer']}←{(x['source'] or '?').split('-')[-1]}:{_fmt(x['match'])}" for x in m["layer_map"])
        rows.append(f"| {m['model']} | {m['kind']} | {', '.join(m['declared_bases'])} | {', '.join(m['bases_found']) or '–'} | {lm} |")
    return "\n".join(rows)


def lineage_units(d: dict[str, Any]) -> str:
    """Width-pruned and upcycled models (and distilled students): score, z, verdict, what whole-matrix attention
    alone scores, and the head / expert pairs of each layer (candidate ← reference)."""
    rows = ["| model | kind | reference | score | z | verdict | whole-matrix attention | heads (cand. / ref.) | "
            "per-layer map: layer ← ref layer [heads c←r] [experts c←r] |", "|---|---|---|---|---|---|---|---|---|"]
    for u in d.get("units", []):
        def pairs(ps: list[list[Any]]) -> str:
            return " ".join(f"{c}←{r}" for c, r, _ in ps)

        lm = "; ".join(f"{x['layer']}←{x['match']} [{pairs(x['heads'])}]" + (f" [{pairs(x['experts'])}]" if x["experts"] else "")
                       for x in u["layers"])
        rows.append(f"| {u['model']} | {u['kind']} | {u['reference']} | {u['score']:.1f} | {u['z']:.1f} | {u['verdict']} | "
                    f"{u['whole_attention_score']:.1f} | {u['heads'][0]} / {u['heads'][1]} | {lm} |")
    return "\n".join(rows)


def unit_terms(d: dict[str, Any]) -> str:
    rows = ["| layer shape | v1 s / layer | v2 s / layer | v2 / v1 | whole terms (float16) | head + expert sketches (float16) |",
            "|---|---|---|---|---|---|"]
    for name, r in d["time_per_layer"].items():
        b = r["bytes_per_layer_float16"]
        rows.append(f"| {name} (d {r['hidden']}, {r['heads']} heads, {r['kv_heads']} kv, ffn {r['ffn']}) | {r['v1_seconds']:.2f} | "
                    f"{r['v2_seconds']:.2f} | {r['v2_over_v1']:.2f} | {b['whole_terms'] / 1e3:.0f} kB | {b['unit_sketches'] / 1e3:.0f} kB |")
    rows += ["", "| pair | head pairs | sketch error mean abs / max (points) | matched-head score per layer, sketched / exact |",
             "|---|---|---|---|"]
    for pair, r in d["sketch_accuracy"].items():
        if "skipped" in r:
            rows.append(f"| {pair} | skipped: {r['skipped']} | | |")
            continue
        per_layer = ", ".join(f"{x['sketched']:.1f} / {x['exact']:.1f}" for x in r["layers"])
        rows.append(f"| {pair} | {r['head_pairs']} | {r['mean_abs_error']:.2f} / {r['max_abs_error']:.2f} | {per_layer} |")
    e = d.get("registry_entry_7b_like")
    if e:
        rows += ["", f"A {e['layers']}-layer, {e['heads']}-head, hidden-{e['hidden']} reference with its token rows is stored as "
                     f"{e['storage']}, {e['layers_kept']} of {e['layers']} layers, {e['bytes'] / 1e6:.1f} MB "
                     f"(budget {e['budget_bytes'] / 2**20:.0f} MiB)."]
    s = d["settings"]
    rows += ["", f"Sketches: {s['sketch_copies']} copies of {s['sketch_rank']} × {s['sketch_rank']} per head and term; "
                 f"{s['head_shared_rank']} leading singular components removed per head term."]
    return "\n".join(rows)


def remote(d: dict[str, Any]) -> str:
    rows = [
        "| model | method | bytes read | of checkpoint | requests (served) | wall s | CPU s | peak RSS MB (after imports) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, m in d["models"].items():
        for method in ("http", "http_warm", "local", "check", "full_load", "full_load_bf16"):
            r = m.get(method)
            if not isinstance(r, dict):
                continue
            if "skipped" in r:
                rows.append(f"| {name} ({m.get('checkpoint_gb')} GB) | {method} | skipped: {r['skipped']} | | | | | |")
                continue
            served = r.get("served")
            requests = (f"{r['requests']} ({served['range_gets']} ranged GETs, {served['redirects']} redirects, "
                        f"{served['api']} API)" if served else f"{r['requests']} reads" if method in ("local", "check")
                        else f"{r['requests']}")
            rows.append(
                f"| {name} ({m.get('checkpoint_gb')} GB) | {method} | {r['bytes_read'] / 1e6:,.1f} MB | {100 * r['fraction']:.2f}% | "
                f"{requests} | {r['wall_s']:.1f} | {_fmt(r.get('cpu_s'))} | {r['peak_rss_mb']:.0f} ({r.get('import_rss_mb', 0):.0f}) |"
            )
        for baseline, label in (("full_load", "float32 full load (HuRef's way)"), ("full_load_bf16", "bf16 full load")):
            ratio = m.get(f"{baseline}_over_http")
            if ratio:
                notes.append(f"{name}: the {label} takes {ratio['wall_s']}× the time, {ratio['peak_rss_mb']}× the peak memory "
                             f"and {ratio['bytes_read']}× the bytes of hubguard over HTTP.")
    loads = [x for m in d["models"].values() for r in m.values() if isinstance(r, dict) for x in r.get("load_avg_1m", [])]
    if loads:
        notes.append(f"Machine load during the runs (1-minute load average on {d.get('cpu_cores', '?')} cores): "
                     f"{min(loads):.1f} to {max(loads):.1f}; wall times grow with it, CPU times much less.")
    return "\n".join(rows + [""] + notes)


def fingerprint_speed(d: dict[str, Any]) -> str:
    rows = ["| model | read | layers | tokens | CPU s (baseline) | CPU s (this tree) | ratio | CPU ms / layer (baseline → this tree) | "
            "per-layer ratio | largest term difference | tensors only in baseline / this tree |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    full = []
    for name, r in d["models"].items():
        only = f"{len(r.get('only_baseline', []))} / {len(r.get('only_current', []))}"
        per_layer = (f"{1000 * r['baseline_cpu_per_layer_s']:.0f} → {1000 * r['current_cpu_per_layer_s']:.0f}"
                     if "current_cpu_per_layer_s" in r else "–")
        rows.append(f"| {name} | {r.get('mode') or 'default'} | {r['layers']} | {r['tokens']} | {r['baseline_cpu_s']:.2f} | "
                    f"{r['current_cpu_s']:.2f} | {r['cpu_ratio']:.2f} | {per_layer} | {r.get('per_layer_ratio', '–')} | "
                    f"{r['max_term_difference']:.3g} | {only} |")
        if "full_layer" in r:
            f = r["full_layer"]
            full.append(f"| {name} | {f['layers']} | {1000 * f['baseline_cpu_per_layer_s']:.0f} | "
                        f"{1000 * f['current_cpu_per_layer_s']:.0f} | {f['per_layer_ratio']:.2f} |")
    rounds = f", {d['rounds']} alternating rounds" if "rounds" in d else ""
    load = f", 1-minute load {d['load_avg_1m']} on {d.get('cpu_cores', '?')} cores at the end" if "load_avg_1m" in d else ""
    rows += ["", f"Best of {d['repeats']} runs{rounds}, {d['threads']} thread{load}; baseline `{d['baseline'][:10]}`, this tree "
             f"`{d['current'][:10]}` (terms compared as saved, in float16, over the tensors both fingerprints hold). "
             "CPU per layer: the layer loop's CPU (read, canonicalise, terms) over the layers; fixed costs (tokenizer, "
             "token rows) are outside it."]
    if full:
        rows += ["", "Whole dense layers (every tensor, budget None):", "",
                 "| checkpoint | layers read | CPU ms / layer (baseline) | CPU ms / layer (this tree) | ratio |",
                 "|---|---|---|---|---|", *full]
    return "\n".join(rows)


def registry(d: dict[str, Any]) -> str:
    rows = ["| entries | stage | p50 ms | p99 ms | recall@10 vs exact | index build s | bytes/entry (search) | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|"]
    for r in d.get("search", []):
        rows.append(f"| {r['entries']:,} | {r['stage']} | {r['search_p50_ms']:.2f} | {r['search_p99_ms']:.2f} | "
                    f"{r['recall_at_10']:.3f} | {r['index_build_s']:.1f} | {r['search_bytes_per_entry']:.0f} | {r['peak_rss_mb']:.0f} |")
    v = d.get("verification", {})
    if v:
        rows += ["", f"Verification data ({v.get('layers')} layers, {v.get('tokens')} tokens, terms {', '.join(v.get('terms', []))}):", "",
                 "| storage | bytes | score error (derivative) | score error (independent) | verdicts unchanged |", "|---|---|---|---|---|"]
        for key, r in v.items():
            if isinstance(r, dict) and "bytes" in r:
                same = r.get("deriv", {}).get("verdict_same") and r.get("indep", {}).get("verdict_same")
                rows.append(f"| {r.get('storage', key)} | {r['bytes'] / 1e6:.1f} MB | {r.get('deriv', {}).get('abs_error', '–')} | "
                            f"{r.get('indep', {}).get('abs_error', '–')} | {same} |")
    return "\n".join(rows)


def dogs(d: dict[str, Any]) -> str:
    def st(x: dict[str, Any]) -> str:
        return f"{x.get('min', '–')} / {x.get('mean', '–')} / {x.get('max', '–')} (n={x.get('n', 0)})"

    rows = [
        f"Derivatives whose dog is nearest to their own base's dog: **{100 * d['nearest_own_base_rate']:.1f}%** of {d['derivatives']} "
        f"(distance: {d['distance']}).",
        "",
        "| pairs | trait distance min / mean / max |",
        "|---|---|",
        f"| derivative ↔ own base | {st(d['derivative_to_own_base'])} |",
        f"| derivative ↔ other bases | {st(d['derivative_to_other_bases'])} |",
        f"| base ↔ base, same family (independent seeds) | {st(d['base_to_base_same_family'])} |",
        f"| base ↔ base, all | {st(d['base_to_base'])} |",
        "",
        f"![contact sheet]({d['sheet'].removeprefix('benchmarks/')})",  # the table lives in benchmarks/README.md
    ]
    return "\n".join(rows)


def space(d: dict[str, Any]) -> str:
    names = {"interactive_s": "page interactive (fresh page)", "warm_verdict_s": "warm verdict, shipped MiniLM",
             "registry_page_s": f"registry tab, next page ({d.get('entries', 0):,} entries)"}
    rows = ["| measure | median s | max s | target s | met |", "|---|---|---|---|---|"]
    for key, label in names.items():
        r = d.get(key)
        if r:
            rows.append(f"| {label} | {r['median']:.2f} | {r['max']:.2f} | < {r['target']:g} | {'yes' if r['met'] else 'no'} |")
    for key, label in (("page_main_thread_s", "browser main-thread tasks, fresh page"),
                       ("page_script_s", "of which script"),
                       ("check_tab_only_interactive_s", "baseline: a page with only the lineage-check tab, interactive"),
                       ("check_tab_only_main_thread_s", "baseline: its main-thread tasks")):
        r = d.get(key)
        if r:
            rows.append(f"| {label} | {r['median']:.2f} | {r['max']:.2f} | – | – |")
    m = d.get("machine", {})
    load = f"{m.get('load_average_1m', 0):.1f}"
    if "load_average_1m_before" in m:
        load = f"{m['load_average_1m_before']:.1f} before, {load} after"
    rows += ["", f"Cold start of the process until the page answers: {d.get('cold_start_s', 0):.1f} s; "
             f"{d.get('repeats')} repeats; {m.get('cpus')} CPUs, 1-minute load average {load} "
             "measuring (the machine is shared with other jobs: wall times grow with the load)."]
    return "\n".join(rows)


ATTACK_LABELS = {"permute_hidden": "hidden perm", "rotate_hidden": "rotation", "rescale_norms": "norm rescale",
                 "permute_heads": "head/KV perm", "per_head_maps": "per-head maps", "permute_ffn_units": "unit perm",
                 "scale_ffn_units": "unit scale", "permute_experts": "expert perm"}
ATTACK_TOLERANCE = 1e-4  # relative logit and canonical-product error an output-preserving attack may leave


def _attack_ok(r: dict[str, Any]) -> bool:
    return bool(r["changed"]) and r["logits"] < ATTACK_TOLERANCE and max(r["products"].values()) < ATTACK_TOLERANCE


def coverage(d: dict[str, Any]) -> str:
    rows = ["| family | model_type | map | terms | attacks verified (logits and canonical products unchanged) | "
            "all attacks at once | independent seed |", "|---|---|---|---|---|---|---|"]
    for fam, r in sorted(d["families"].items()):
        attacks = ", ".join(ATTACK_LABELS.get(a, a) + ("" if _attack_ok(x) else " ✗") for a, x in r["attacks"].items())
        c, s = r["combined"], r["independent_seed"]
        rows.append(f"| {fam} | {', '.join(r['model_types'])} | {'; '.join(r['map'])} | {', '.join(r['terms'])} | "
                    f"{attacks} | {c['score']:.1f} {c['verdict']} | {s['score']:.1f} {s['verdict']} |")
    return "\n".join(rows + ["", coverage_summary(d)])


def coverage_summary(d: dict[str, Any]) -> str:
    fams = d["families"]
    checks = [x for r in fams.values() for x in r["attacks"].values()]
    types = {t for r in fams.values() for t in r["model_types"]}
    passed = sum(_attack_ok(x) for x in checks)
    combined = min(r["combined"]["score"] for r in fams.values())
    seeds = max(r["independent_seed"]["score"] for r in fams.values())
    derivative = sum(r["combined"]["verdict"] == "derivative" for r in fams.values())
    return (f"{len(fams)} architecture families ({len(types)} model_types) on tiny transformers models: "
            f"{passed}/{len(checks)} output-preserving attack checks pass (logits and canonical products unchanged); "
            f"all attacks at once: {derivative}/{len(fams)} `derivative`, lowest score {combined:.1f}; independent seeds "
            f"score at most {seeds:.1f} (transformers {d['transformers']}, `{d['command']}`).")


def headline(runs: dict[str, Any]) -> str:
    """The README's short results summary: one line per area, from each area's committed JSON."""
    lines = []
    if "lineage" in runs:
        d = runs["lineage"]
        m = d["methods"]["hubguard"]
        zoo = d["zoo"]
        extent = f"{zoo['models']} of the {zoo['planned']} planned" if zoo.get("partial") else str(zoo["models"])
        lines.append(f"- **Lineage** (zoo of {extent} trained models, {d['pairs']} pairs, fingerprint "
                     f"v{d['calibration']['method_version']}): AUC {m['auc']:.3f}, TPR "
                     f"{100 * m['tpr_at_fpr0']:.0f}% at 0 false positives, lowest derivative score "
                     f"{m['min_positive_score']:.1f} vs highest independent {m['max_negative_score']:.1f}.")
    if "coverage" in runs:
        lines.append(f"- **Coverage**: {coverage_summary(runs['coverage']).split(' (transformers')[0]}.")
    if "remote" in runs and "7b" in runs["remote"]["models"]:
        h = runs["remote"]["models"]["7b"]["http"]
        served = h.get("served", {}).get("requests", h["requests"])
        lines.append(f"- **Remote reading**: a 7B llama-layout checkpoint over HTTP Range in {served} requests as the "
                     f"server counts them, {100 * h['fraction']:.2f}% of its bytes, {h['wall_s']:.1f} s.")
    if "scan" in runs:
        sc = runs["scan"]
        parts = []
        if "bot" in sc:
            burst, crashes = sc["bot"]["burst"], sc["bot"]["crashes"]
            lost = sum(c["lost"] for c in crashes.values())
            parts.append(f"bot p99 {burst['p99_ms']:.0f} ms under a {burst['events']}-event burst, {lost} events lost "
                         f"across {' and '.join(crashes)}")
        if "verdicts" in sc:
            worst = max(q["p50_ms"] for q in sc["verdicts"]["queries"] if q["indexed"])
            parts.append(f"verdict-log queries at {sc['verdicts']['rows']:.0e} rows ≤ {worst:.0f} ms (p50)")
        lines.append("- **Bot and scan**: " + "; ".join(parts) + ".")
    if "space" in runs:
        sp = runs["space"]
        parts = [f"{label} {sp[key]['median']:.2f} s (target < {sp[key]['target']:g} s{'' if sp[key]['met'] else ': missed'})"
                 for key, label in (("interactive_s", "page interactive"), ("warm_verdict_s", "warm MiniLM verdict"),
                                    ("registry_page_s", f"registry page at {sp['entries']:,} entries"))]
        lines.append(f"- **Space** (medians of {sp['repeats']} fresh pages, 1-minute load "
                     f"{sp['machine']['load_average_1m_before']:.1f} on {sp['machine']['cpus']} cores before): " + ", ".join(parts) + ".")
    protect = [_protect_headline(runs[stem], label) for stem, label in PROTECT_HEADLINE.items() if stem in runs]
    if protect:
        lines.append("- **Merge protection**, seeds where TA / TIES / DARE-TIES merges, realign-then-TA and the "
                     "standalone target (≥ −1 point at 95%) hold, as merged / realigned / standalone:")
        lines += protect
    lines += [_protect_attacks_headline(runs[stem], label) for stem, label in PROTECT_ATTACKS_HEADLINE.items()
              if stem in runs]
    return "\n".join(lines) if lines else "_(no results yet)_"


# the merge-protection runs the README's summary lists: result file stem -> what it is
PROTECT_HEADLINE = {"protect_lora": "LoRA", "protect_full": "full fine-tuning", "protect_llm": "causal-LM LoRA",
                    "protect_lora_proxies": "LoRA, proxy merges",
                    "protect_lora_proxies_retry": "LoRA, proxy merges, Trap² retried once",
                    "protect_full_proxies_ev6": "full, proxy merges",
                    "protect_llm_proxies": "causal-LM LoRA, proxy merges",
                    "protect_llm_proxies_distill": "causal-LM LoRA, proxy merges, distill 1",
                    "protect_llm_adaptive_retry_quick": "causal-LM LoRA (QUICK), proxy merges, Trap² retried once",
                    "protect_llm_realign_mix_quick": "causal-LM LoRA (QUICK), proxy merges, realign in the loop 0.5",
                    "protect_llm_realign_mix25_quick": "causal-LM LoRA (QUICK), proxy merges, realign in the loop 0.25"}


# the runs whose every attack the summary counts: result file stem -> what it is
PROTECT_ATTACKS_HEADLINE = {"protect_llm_adaptive_quick": "causal-LM LoRA (QUICK)",
                            "protect_llm_adaptive_retry_quick": "causal-LM LoRA (QUICK), Trap² retried once",
                            "protect_llm_composed_quick": "causal-LM LoRA (QUICK), Trap² retried once, with the "
                                                          "composed attacks"}


def _protect_attacks_headline(d: dict[str, Any], label: str) -> str:
    """One run's attack table in a line: per protection, how many attacks stay at or below zero-shot on every seed,
    and the seeds on which each other attack does."""
    k = len(d["seeds"])
    parts = []
    for m, v in d["methods"].items():
        if m == "none":
            continue
        held = [a for a, x in v["attacks"].items() if x["protected_seeds"] == k]
        escaped = ", ".join(f"{a} {x['protected_seeds']}/{k}" for a, x in v["attacks"].items() if a not in held)
        parts.append(f"{m} {len(held)}/{len(v['attacks'])}" + (f" (not all: {escaped})" if escaped else ""))
        with_baseline = {a: x for a, x in v["attacks"].items() if "held_without_update_seeds" in x}
        if with_baseline:  # --without-update: the update added nothing, or the merge stayed at or below zero-shot
            nothing = [a for a, x in with_baseline.items() if x["held_without_update_seeds"] == k]
            parts[-1] += f", the update added nothing to {len(nothing)}/{len(with_baseline)} on every seed"
    return (f"- **Adaptive attacks**, {label}, {k} seeds: attacks held (merged at or below zero-shot "
            f"{d['zero_shot']:.1f}) on every seed: " + "; ".join(parts) + ".")


def _protect_headline(d: dict[str, Any], label: str) -> str:
    """One merge-protection run: per protection, on how many seeds the core merges / realign fell to zero-shot and
    the standalone change stayed within a point at 95%."""
    k = len(d["seeds"])
    parts = []
    for m, v in d["methods"].items():
        if m != "none":
            met = v["targets_met_seeds"]
            parts.append(f"{m} {met['merged_at_or_below_zero_shot']} / {met.get('realign_at_or_below_zero_shot', '–')}"
                         f" / {met['standalone_within_1_point_ci']}")
    return f"  - {label} ({k} seeds, zero-shot {d['zero_shot']:.1f}): " + "; ".join(parts) + "."


def generic(d: Any) -> str:
    """Fallback: a fenced JSON block (for benchmarks whose table is not specialised yet)."""
    return "```json\n" + json.dumps(d, indent=1)[:4000] + "\n```"


TABLES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "lineage-summary": ("lineage", lineage_summary),
    "lineage-by-kind": ("lineage", lineage_by_kind),
    "lineage-multi-base": ("lineage", lineage_multi_base),
    "lineage-units": ("lineage", lineage_units),
    "lineage-quick-summary": ("lineage_quick", lineage_summary),
    "lineage-quick-by-kind": ("lineage_quick", lineage_by_kind),
    "lineage-quick-multi-base": ("lineage_quick", lineage_multi_base),
    "lineage-quick-units": ("lineage_quick", lineage_units),
    "unit-terms": ("unit_terms", unit_terms),
    "remote": ("remote", remote),
    "fingerprint-speed": ("fingerprint_speed", fingerprint_speed),
    "registry": ("registry", registry),
    "dogs": ("dogs", dogs),
    **PROTECT_TABLES,
    **PROTECT_LLM_TABLES,
    "space": ("space", space),
    "coverage": ("coverage", coverage),
    "coverage-summary": ("coverage", coverage_summary),
    **SCAN_TABLES,
    "headline": ("*", headline),  # the README's summary, over every result file
}


def render(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        source, fn = TABLES.get(name, (name, generic))
        if "*" in source:  # a table over several result files
            paths = sorted(RESULTS.glob(f"{source}.json"))
            runs = {p.stem: json.loads(p.read_text()) for p in paths}
            body = fn(runs) if runs else f"_(no results yet: benchmarks/results/{source}.json)_"
            return f"<!-- table:{name} -->\n{body}\n<!-- /table:{name} -->"
        path = RESULTS / f"{source}.json"
        if not path.exists():
            body = f"_(no results yet: run the benchmark that writes benchmarks/results/{source}.json)_"
        else:
            body = fn(json.loads(path.read_text()))
        return f"<!-- table:{name} -->\n{body}\n<!-- /table:{name} -->"

    return re.sub(r"<!-- table:([\w-]+) -->.*?<!-- /table:\1 -->", replace, text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for doc in DOCUMENTS:
        old = doc.read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"{', '.join(map(str, stale))}: tables are out of date: run python benchmarks/tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
