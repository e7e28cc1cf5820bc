"""The merge-protection tables (benchmarks/protect.py, benchmarks/protect_llm.py), rendered by benchmarks/tables.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tables_format import fmt as _fmt

PROTECT_ATTACK_LABELS = {
    "task_arithmetic": "task arithmetic", "ties": "TIES", "dare_ties": "DARE-TIES", "slerp": "SLERP (t tuned; t = 1 drops it)",
    "kept_at_1": "protected kept at 1, others tuned", "two_protected": "two protected updates (task arithmetic)",
    "realign": "realign to the base, then task arithmetic", "refinetune": "short re-fine-tune, then task arithmetic",
    "finetune_after_merge": "task arithmetic, then fine-tuned", "learned": "learned per-layer coefficients",
    "regmean": "RegMean",
}
PROTECT_ATTACK_LABELS.update({f"realign+{a}": f"realign, then {label}" for a, label in PROTECT_ATTACK_LABELS.items()
                              if a not in ("realign", "task_arithmetic", "slerp")})
TARGET_LABELS = {
    "standalone_within_1_point_ci": "standalone ≥ −1 (95% CI)", "standalone_within_1_point": "standalone ≥ −1 (point)",
    "merged_at_or_below_zero_shot": "TA/TIES/DARE ≤ zero-shot", "realign_at_or_below_zero_shot": "realign ≤ zero-shot",
    "time_ratio_at_most_2.2": "time ≤ 2.2×",
}


def _mean_ci(x: dict[str, Any], nd: int = 1) -> str:
    if x.get("low") is None:
        return _fmt(x["mean"], nd)
    return f"{_fmt(x['mean'], nd)} [{_fmt(x['low'], nd)}, {_fmt(x['high'], nd)}]"


def protect_targets(d: dict[str, Any]) -> str:
    """Per protection: the standalone change and the time ratio over seeds, and on how many seeds each target holds."""
    k = len(d["seeds"])
    names = [t for t in TARGET_LABELS if any(t in m["targets_met_seeds"] for m in d["methods"].values())]
    amortized = any("time_ratio_proxies_amortized" in m for m in d["methods"].values())
    extra = " time ratio, proxies trained once |" if amortized else ""
    rows = ["| protection | standalone Δ, mean [95% CI] (min, max) | time ratio |" + extra + " "
            + " | ".join(TARGET_LABELS[t] for t in names) + " |", "|---|---|---|" + "---|" * (len(names) + amortized)]
    for m, v in d["methods"].items():
        sc = v["standalone_change"]
        met = [f"{v['targets_met_seeds'][t]}/{k}" if t in v["targets_met_seeds"] else "–" for t in names]
        once = v.get("time_ratio_proxies_amortized", v["time_ratio"])
        rows.append(f"| {m} | {_mean_ci(sc)} ({_fmt(sc['min'])}, {_fmt(sc['max'])}) | {_mean_ci(v['time_ratio'], 2)} | "
                    + (f"{_mean_ci(once, 2)} | " if amortized else "") + " | ".join(met) + " |")
    zs = d["zero_shot"]
    rows += ["", f"{k} seed(s) ({', '.join(map(str, d['seeds']))}); protected task {d['protected_task']}, zero-shot "
                 f"{_fmt(zs)}; standalone Δ: protected minus unprotected test accuracy on the same examples (paired, "
                 "points); a target counts on a seed when it holds there (standalone: the lower end of that seed's "
                 "paired 95% interval at or above −1)."]
    return "\n".join(rows)


def _attack_grid(d: dict[str, Any], cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """The rows of an attack × protection table, each cell `cell(the attack's aggregate)` ("–" where not run)."""
    methods = list(d["methods"])
    attacks = list(dict.fromkeys(a for m in methods for a in d["methods"][m]["attacks"]))
    rows = ["| attack | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for a in attacks:
        cells = [cell(x) if (x := d["methods"][m]["attacks"].get(a)) is not None else "–" for m in methods]
        rows.append(f"| {PROTECT_ATTACK_LABELS.get(a, a)} | " + " | ".join(cells) + " |")
    return rows


def protect_attacks(d: dict[str, Any]) -> str:
    """Attack × protection: the protected task's merged accuracy over seeds, and on how many seeds it is at or below
    zero-shot."""
    k = len(d["seeds"])
    rows = _attack_grid(d, lambda x: f"{_mean_ci(x)} ({x['protected_seeds']}/{x['k']} ≤ zs)")
    rows += ["", f"Protected task {d['protected_task']}: test accuracy (LLM: exact match) of the merge at the attacker's "
                 f"choice, mean [95% CI] over {k} seed(s); zero-shot (the base) {_fmt(d['zero_shot'])}; (j/{k} ≤ zs): "
                 "seeds where the merge is at or below zero-shot, i.e. the protection held."]
    return "\n".join(rows)


def protect_others(d: dict[str, Any]) -> str:
    """Attack × protection: the protected task's merged accuracy next to the other tasks' mean in the same merge,
    i.e. what an attack that escapes the trap still leaves the merger."""
    k = len(d["seeds"])
    rows = _attack_grid(d, lambda x: f"{_fmt(x['mean'])} / {_mean_ci(x['others'])}" if "others" in x else "–")
    rows += ["", f"Each cell: the protected task {d['protected_task']}'s test accuracy in the attacker's merge / the mean "
                 f"test accuracy of the other {len(d['settings']['tasks']) - 1} tasks in the same merge, mean [95% CI] "
                 f"over {k} seed(s). An attack that keeps the protected task by shrinking the others pays in the second "
                 "number."]
    return "\n".join(rows)


def protect_without_update(d: dict[str, Any]) -> str:
    """Attack × protection against the attacker's best without the protected update (`--without-update`): what the
    update adds to the merge, and on how many seeds it adds nothing."""
    k = len(d["seeds"])
    methods = list(d["methods"])
    rows = ["| attack | without the update | " + " | ".join(f"{m}: merged; the update adds" for m in methods) + " |",
            "|---|---|" + "---|" * len(methods)]
    for a, x in d["methods"][methods[0]]["attacks"].items():
        if "without_update" not in x:
            continue
        cells = [f"{_fmt(y['mean'])}; {_mean_ci(y['update_gain'])} ({y['held_without_update_seeds']}/{k} ≤ 0 or ≤ zs)"
                 for y in (d["methods"][m]["attacks"][a] for m in methods)]
        rows.append(f"| {PROTECT_ATTACK_LABELS.get(a, a)} | {_mean_ci(x['without_update'])} | " + " | ".join(cells) + " |")
    rows += ["", f"Protected task {d['protected_task']}: test accuracy (exact match) of each attack run with the protected "
                 "update left out (the base in its place: the other tasks' updates and the attacker's own data only), "
                 f"then, per protection, the attack's merged accuracy; the update adds: merged minus without, mean "
                 f"[95% CI] over {k} seed(s); (j/{k}): seeds where the update added nothing or the merge stayed at or "
                 f"below zero-shot ({_fmt(d['zero_shot'])})."]
    return "\n".join(rows)


# table name -> (result file stem, renderer); the README's markers are `<!-- table:NAME -->`
PROTECT_TABLES: dict[str, tuple[str, Callable[[Any], str]]] = {
    f"{key}-{kind}": (stem, fn)
    for key, stem in (("protect-lora", "protect_lora"), ("protect-lora-quick", "protect_lora_quick"),
                      ("protect-lora-r1-quick", "protect_lora_r1_quick"),
                      ("protect-lora-designs-quick", "protect_lora_designs_quick"),
                      ("protect-lora-proxies-quick", "protect_lora_proxies_quick"),
                      ("protect-lora-proxies", "protect_lora_proxies"),
                      ("protect-full-proxies-ev6", "protect_full_proxies_ev6"),
                      ("protect-lora-proxies-c02", "protect_lora_proxies_c02"),
                      ("protect-full-proxies-ev6-c02", "protect_full_proxies_ev6_c02"),
                      ("protect-full", "protect_full"), ("protect-full-quick", "protect_full_quick"),
                      ("protect-llm", "protect_llm"), ("protect-llm-quick", "protect_llm_quick"),
                      ("protect-llm-proxies-quick", "protect_llm_proxies_quick"),
                      ("protect-llm-proxies", "protect_llm_proxies"),
                      ("protect-llm-adaptive-quick", "protect_llm_adaptive_quick"),
                      ("protect-llm-proxies-distill", "protect_llm_proxies_distill"),
                      ("protect-llm-adaptive-retry-quick", "protect_llm_adaptive_retry_quick"),
                      ("protect-llm-composed-quick", "protect_llm_composed_quick"),
                      ("protect-llm-realign-mix-quick", "protect_llm_realign_mix_quick"),
                      ("protect-llm-realign-mix25-quick", "protect_llm_realign_mix25_quick"),
                      ("protect-llm-fast-quick", "protect_llm_fast_quick"),
                      ("protect-llm-half-quick", "protect_llm_half_quick"),
                      ("protect-llm-regmean-mix-quick", "protect_llm_regmean_mix_quick"),
                      ("protect-llm-regmean-refresh-quick", "protect_llm_regmean_refresh_quick"),
                      ("protect-lora-proxies-retry", "protect_lora_proxies_retry"))
    for kind, fn in (("targets", protect_targets), ("attacks", protect_attacks), ("others", protect_others))
}
PROTECT_TABLES["protect-llm-composed-quick-without"] = ("protect_llm_composed_quick", protect_without_update)
