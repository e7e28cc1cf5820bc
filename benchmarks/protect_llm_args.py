"""The command line of benchmarks/protect_llm.py and the lists it checks against: the QUICK setting, the merges,
the adaptive and composed attacks, the protections."""

from __future__ import annotations

import argparse

from hubguard.protect.attacks import check_attack_names

QUICK = {"sizes": {"train": 600, "val": 300, "test": 1500}, "coefficients": "0.3,0.6,1.0", "attacker_val": 100,
         "others_test": 500}
MERGES = ("task_arithmetic", "ties", "dare_ties")  # the merge target: at or below zero-shot for all three
ATTACKS = (*MERGES, "realign")  # the default --attacks
ADAPTIVE = ("slerp", "kept_at_1", "refinetune", "finetune_after_merge", "learned", "regmean")  # --attacks all
COMPOSED = tuple(f"realign+{a}" for a in ADAPTIVE if a != "slerp")  # realign, then that attack (by name only)
METHODS = ("none", "trap2", "lock", "trap2+lock", "trap2-public", "trap2-public+lock")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Trap² and the scale lock in the causal-LM LoRA setting (protect_llm.py).")
    ap.add_argument("--quick", action="store_true", help="the QUICK setting (module docstring): half the training "
                    "and validation windows, coefficients 0.3/0.6/1.0, 100 attacker examples per task; files *_quick*")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=60, help="plain updates: steps between validations "
                    "(early stopping after 3 without improvement)")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--trap-lr", type=float, default=4e-3)
    ap.add_argument("--trap-budget", type=float, default=0.5)
    ap.add_argument("--regmean-mix", type=float, default=0.0, help="trap2-public: share of trap passes on RegMean's "
                    "merge with the protector's own runs, weighted by their training inputs (ProtectConfig.regmean_mix)")
    ap.add_argument("--regmean-refresh", type=int, default=0, help="--regmean-mix: the protected task's Grams again "
                    "at the current weights every N Trap² steps (ProtectConfig.regmean_refresh; 0: once)")
    ap.add_argument("--realign-mix", type=float, default=0.0, help="Trap² runs: share of trap passes on the realigned "
                    "update, whose merges the probes also score (ProtectConfig.realign_mix)")
    ap.add_argument("--trap-fraction", type=float, default=1.0, help="Trap² runs: share of each batch the trap "
                    "passes see (ProtectConfig.trap_fraction; the standalone pass sees it all)")
    ap.add_argument("--probe-limit", type=int, default=300, help="Trap² runs: validation windows that score the "
                    "probe scales (the s = 1 score always uses them all)")
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--retries", type=int, default=0, help="Trap² runs: when no checkpoint qualified (the plain update "
                    "would be released), train again from the plain update with twice the previous budget and other "
                    "draws, up to this many times (ProtectConfig.retries); the time ratio counts every attempt")
    ap.add_argument("--distill", type=float, default=0.0, help="Trap² runs: weight of the KL divergence from the "
                    "plain update's next-token distributions (every position) in the standalone term (ProtectConfig."
                    "distill), which keeps the protected update's predictions at s = 1 close to the plain one's")
    ap.add_argument("--coefficients", default=None, help="default 0.3,0.5,0.7,1.0 (--quick: 0.3,0.6,1.0)")
    ap.add_argument("--attacker-val", type=int, default=None, help="default 200 (--quick: 100)")
    ap.add_argument("--others-test", type=int, default=None, help="test windows of the two other tasks scored "
                    "for each merge (default all 1500; --quick: 500); the protected task's are always all scored")
    ap.add_argument("--methods", default="none,trap2,lock,trap2+lock", help=f"protections, of {', '.join(METHODS)}")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="attacks on each protection (hubguard.protect."
                    f"attacks), or 'all': {', '.join(ATTACKS + ADAPTIVE)}; also {', '.join(COMPOSED)}")
    ap.add_argument("--without-update", action="store_true", help="also run each attack with the protected update "
                    "left out (once per seed), so each verdict says what the update adds to the attacker's best")
    ap.add_argument("--attacker-lr", type=float, default=1e-4, help="refinetune / finetune_after_merge: AdamW "
                    "learning rate of the attacker's one epoch on the merged weights")
    ap.add_argument("--proxy-scale", default="0.5,1.5", help="trap2-public: the proxies' merge coefficients, "
                    "c ~ U[lo, hi]")
    ap.add_argument("--tag", default="", help="a suffix of the result files' stem (e.g. _proxies)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or (bad := [m for m in args.methods if m not in METHODS]):
        ap.error(f"--methods: unknown {bad or 'none given'}; choose from {', '.join(METHODS)}")
    names = ATTACKS + ADAPTIVE if args.attacks == "all" else [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not set(MERGES) <= set(names) or not set(names) <= set(ATTACKS + ADAPTIVE + COMPOSED):
        ap.error(f"--attacks: include {', '.join(MERGES)}; choose from {', '.join(ATTACKS + ADAPTIVE + COMPOSED)} or "
                 "'all' "
                 "(two_protected needs a second protection run, which this setting does not train)")
    args.attack_list = list(check_attack_names(names))
    args.attacks = ",".join(args.attack_list)
    args.proxy_scale = [float(x) for x in args.proxy_scale.split(",")]
    if len(args.proxy_scale) != 2 or not 0 < args.proxy_scale[0] <= args.proxy_scale[1]:
        ap.error("--proxy-scale: two coefficients LO,HI with 0 < LO <= HI")
    if not 0 <= args.realign_mix <= 1:
        ap.error("--realign-mix: a share in [0, 1]")
    if not 0 <= args.regmean_mix <= 1 or (args.regmean_mix and args.realign_mix):
        ap.error("--regmean-mix: a share in [0, 1], not with --realign-mix")
    if args.regmean_refresh < 0:
        ap.error("--regmean-refresh: a number of steps >= 0")
    if not 0 < args.trap_fraction <= 1:
        ap.error("--trap-fraction: a share in (0, 1]")
    if args.probe_limit < 1:
        ap.error("--probe-limit: at least 1 validation window")
    if not 0 <= args.retries <= 4:
        ap.error("--retries: 0 to 4 (each retry doubles the Trap² budget)")
    args.coefficients = args.coefficients or (QUICK["coefficients"] if args.quick else "0.3,0.5,0.7,1.0")
    args.attacker_val = args.attacker_val or (QUICK["attacker_val"] if args.quick else 200)
    args.others_test = args.others_test or (QUICK["others_test"] if args.quick else None)
    args.coefficient_list = [float(c) for c in args.coefficients.split(",")]
    return args
