"""The aggregate of benchmarks/protect_llm.py's seed files (results/protect_llm<tag>[_quick].json): means over seeds
with 95% intervals (protect_stats.across_seeds) of each protection's standalone change, time ratio and attacks, and
each Trap² run's per-seed record, which benchmarks/tables_protect*.py render."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protect_stats import across_seeds


def _released_trap(seed: dict[str, Any], name: str) -> dict[str, Any]:
    """The method that released the Trap² run `name`: itself, or (run only locked) `name`+lock."""
    return seed["methods"].get(name) or seed["methods"][f"{name}+lock"]


def _trap_over_seeds(seeds: dict[int, dict[str, Any]], keys: list[int], name: str, task: str) -> dict[str, Any]:
    """The Trap² run `name` over the seeds: on how many it replaced the plain update, and per seed its record."""
    runs = [(seeds[k].get("traps") or {"trap2": seeds[k].get("trap2")})[name] for k in keys]
    trap = [r["selected"] or {} for r in runs]
    return {"trap2": {"protected_seeds": sum(bool(t.get("protected")) for t in trap),
                      "trap_gain": across_seeds([t.get("trap_gain", 0.0) for t in trap])},
            "per_seed": {k: {"plain_val": seeds[k]["plain"][task]["val"], "trap2": r,
                             "time_ratio": (released := _released_trap(seeds[k], name))["time_ratio"],
                             "trap2_sweep": released["sweep"],
                             "cpu_seconds": seeds[k].get("cpu_seconds")} for k, r in zip(keys, runs, strict=True)}}


def _attack_over_seeds(per: list[dict[str, Any]], a: str) -> dict[str, Any]:
    out = across_seeds([r["attacks"][a]["protected_score"] for r in per])
    out["protected_seeds"] = sum(r["attacks"][a]["protected"] for r in per)
    if all("others" in r["attacks"][a] for r in per):
        out["others"] = across_seeds([r["attacks"][a]["others"] for r in per])
    if all("without_update" in r["attacks"][a] for r in per):  # --without-update
        out["without_update"] = across_seeds([r["attacks"][a]["without_update"]["score"] for r in per])
        out["update_gain"] = across_seeds([r["attacks"][a]["update_gain"] for r in per])
        out["held_without_update_seeds"] = sum(r["attacks"][a]["held_without_update"] for r in per)
    return out


def aggregate_seeds(seeds: dict[int, dict[str, Any]], *, quick: bool, tasks: Sequence[str],
                    default_attacks: Sequence[str]) -> dict[str, Any]:
    """Over the seeds: per protection the standalone change, time and every attack all seeds ran; per Trap² run its
    record on each seed (`tasks[0]` is the protected task; files before --attacks ran `default_attacks`)."""
    keys = sorted(seeds)
    # the attacks every seed ran
    ran = [seeds[k].get("settings", {}).get("attacks", ",".join(default_attacks)).split(",") for k in keys]
    attacks = [a for a in ran[0] if all(a in r for r in ran)]
    methods = {}
    for m in seeds[keys[0]]["methods"]:
        per = [seeds[k]["methods"][m] for k in keys]
        methods[m] = {
            "standalone_change": across_seeds([r["standalone_change"]["value"] for r in per]),
            "time_ratio": across_seeds([r["time_ratio"] for r in per]),
            "attacks": {a: _attack_over_seeds(per, a) for a in attacks},
            "targets_met_seeds": {t: sum(r["targets"][t] for r in per) for t in per[0]["targets"]}}
        if all("time_ratio_proxies_amortized" in r for r in per):  # proxies depend on the base only: trained once
            methods[m]["time_ratio_proxies_amortized"] = across_seeds([r["time_ratio_proxies_amortized"] for r in per])
    first = seeds[keys[0]]
    traps = {n: _trap_over_seeds(seeds, keys, n, tasks[0]) for n in (first.get("traps") or {"trap2": None})}
    name = next(iter(traps))
    return {"kind": "hubguard-protect-llm-aggregate", "schema_version": 1, "mode": "llm-lora", "quick": quick,
            "seeds": keys, "protected_task": tasks[0], "zero_shot": first["zero_shot"][tasks[0]],
            "zero_shot_all": first["zero_shot"], "settings": first["settings"] | {"attacks": ",".join(attacks)},
            "cpu_seconds": across_seeds(cpu) if (cpu := [seeds[k]["cpu_seconds"] for k in keys
                                                         if "cpu_seconds" in seeds[k]]) else None,
            "trap_method": name, **traps[name], **({"traps": traps} if len(traps) > 1 else {}),
            "methods": methods}
