"""The per-seed Trap² table of benchmarks/results/protect_llm*.json (benchmarks/protect_llm.py), rendered by
benchmarks/tables.py: whether the trap formed on each seed, on the validation examples the run selected on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _f(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def protect_llm_trap(d: dict[str, Any]) -> str:
    """Seed by seed: the plain update's validation exact match, Trap²'s kept checkpoint (s = 1, and the best of the
    probe scales against the start's), whether it replaced the plain update, its time and the seed's CPU; one
    block per Trap² run where a file ran several."""
    runs = d.get("traps") or {d.get("trap_method", "trap2"): d}
    return "\n\n".join([*(_trap_rows(r, n) for n, r in runs.items()), _trap_caption(d, runs)])


def _trap_rows(d: dict[str, Any], name: str) -> str:
    first = next(iter(d["per_seed"].values()))
    scales = [x["scale"] for x in first.get("trap2_sweep", [])]
    rows = [f"Trap² run: {name}.", "",
            "| seed | plain val EM | Trap² kept: val EM at s = 1 | probe EM, start → kept | kept step | protected | "
            f"Trap² alone, test EM at s = {' / '.join(f'{x:g}' for x in scales)} | time ratio | CPU s |",
            "|---|---:|---:|---|---:|---|---|---:|---:|"]
    for seed, r in d["per_seed"].items():
        sel = r["trap2"]["selected"] or {}
        sweep = " / ".join(_f(x["em"]) for x in r.get("trap2_sweep", []))
        rows.append(f"| {seed} | {_f(r['plain_val']['standalone'])} | {_f(sel.get('standalone'))} | "
                    f"{_f(sel.get('start_trap'))} → {_f(sel.get('trap'))} | {sel.get('step', '–')} | "
                    f"{'yes' if sel.get('protected') else 'no'} | {sweep or '–'} | {_f(r['time_ratio'], 2)} | "
                    f"{_f(r['cpu_seconds'], 0)} |")
    return "\n".join(rows)


def _trap_caption(d: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    scaled = "the update scaled by the probe scales (0.3, 0.6, 1.5)"
    merged = ("the merge of the update with the protector's own runs of the public tasks (the proxies), "
              "W0 + s·(ΔW + ΣP), at s = 0.3, 0.6, 1, 1.5")
    probes = {n: merged if any(x["trap2"].get("own_runs") for x in r["per_seed"].values()) else scaled
              for n, r in runs.items()}  # a run that trained proxies probes merges with them
    probed = next(iter(probes.values())) if len(set(probes.values())) == 1 else "; ".join(
        f"{n}: {v}" for n, v in probes.items())
    settings = d.get("settings") or {}
    if settings.get("realign_mix"):  # the selection also probes the realigned merges (ProtectConfig.realign_mix)
        probed += ", and those merges of the update realigned to the base"
    if settings.get("regmean_mix"):  # ... or RegMean's (ProtectConfig.regmean_mix)
        probed += ", and RegMean's merge with the proxies at s = 1 for α = 0.5, 0.9, 1"
    return (f"Exact match (points) of the protected task {d['protected_task']}. Validation: probe EM is the best "
            f"of {probed} (a validation subset), the trap score Trap²'s selection lowers; protected: a Trap² "
            "checkpoint within the tolerance of the start at s = 1 replaced the plain update. Test: the kept Trap² "
            "update alone, W0 + s·ΔW, on the first 500 test windows (s = 0 is the base), which the merges with the "
            "other tasks' updates need not follow. Time ratio: (plain + Trap²) / plain CPU seconds of the protected "
            "task's training (trap2-public: with its own runs of the public tasks, the proxies).")


PROTECT_LLM_TABLES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "protect-llm-trap": ("protect_llm", protect_llm_trap),
    "protect-llm-quick-trap": ("protect_llm_quick", protect_llm_trap),
    "protect-llm-proxies-quick-trap": ("protect_llm_proxies_quick", protect_llm_trap),
    "protect-llm-proxies-trap": ("protect_llm_proxies", protect_llm_trap),
    "protect-llm-adaptive-quick-trap": ("protect_llm_adaptive_quick", protect_llm_trap),
    "protect-llm-proxies-distill-trap": ("protect_llm_proxies_distill", protect_llm_trap),
    "protect-llm-adaptive-retry-quick-trap": ("protect_llm_adaptive_retry_quick", protect_llm_trap),
    "protect-llm-composed-quick-trap": ("protect_llm_composed_quick", protect_llm_trap),
    "protect-llm-realign-mix-quick-trap": ("protect_llm_realign_mix_quick", protect_llm_trap),
    "protect-llm-realign-mix25-quick-trap": ("protect_llm_realign_mix25_quick", protect_llm_trap),
    "protect-llm-fast-quick-trap": ("protect_llm_fast_quick", protect_llm_trap),
    "protect-llm-half-quick-trap": ("protect_llm_half_quick", protect_llm_trap),
    "protect-llm-regmean-mix-quick-trap": ("protect_llm_regmean_mix_quick", protect_llm_trap),
}
