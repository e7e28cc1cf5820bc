"""Probe of the proxy-merge design (`trap2-proxy`, ProtectConfig.proxy_mix): does a trap trained at merges with the
protector's own update of a public task (doc_kind) carry over to merges with the attacker's real updates?

    python benchmarks/protect_proxy_probe.py 1 --quick '{"proxy_mix": 0.0}' '{"proxy_mix": 0.5, "proxy_scale": [0.5, 2.0]}'

For one seed: the plain updates of protect.py's four tasks, the proxy update (one epoch of doc_kind from the base),
then Trap² with each JSON object of protect_train.Recipe overrides (proxy_mix 0 is plain Trap²); a "proxy_task" key
(probe only) names attacker's tasks instead (a name or a list), whose proxies are the protector's own runs of them
(seed + 1000, the plain recipe): does a trap trained against one run of a task transfer to another run of the same
task, and to a task left out? Per variant, test
accuracy of the protected task (code_language) for: the update alone at s (`sweep`); the merge with the proxy it
trained against, W0 + s·(ΔW + P) (`proxy_merge`, the training objective's own check); and task arithmetic with the
three real other-task updates, W0 + λ·(ΔW + Σ ΔW_i) (`task_arithmetic`, what the attacker does). Added to
benchmarks/results/protect_proxy_probe.json under "seed<k>[/quick]/<variant>".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protect import MODE_RECIPES, TASKS  # noqa: E402
from protect_methods import PROXY_TASK, Context, _proxy_delta  # noqa: E402
from protect_setup import Setting  # noqa: E402
from protect_train import train_plain, train_trap2  # noqa: E402

from hubguard.utils.files import atomic_write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "protect_proxy_probe.json"
PROTECTED = "code_language"
SCALES = (0.3, 0.5, 0.7, 1.0)


def accuracy_of(s: Setting, deltas: list[tuple[float, dict[str, torch.Tensor]]]) -> float:
    """Test accuracy of the protected task at W0 + Σ c·Δ over (c, Δ) pairs (Δ keyed like the base's state)."""
    b = s.base_state
    state = {k: b[k] + sum(c * d[k] for c, d in deltas) if k in s.top_names else b[k] for k in b}
    return round(s.accuracy(s.load(state), PROTECTED, "test"), 2)


def main(argv: list[str]) -> None:
    seed, rest = int(argv[0]), argv[1:]
    quick = rest[:1] == ["--quick"]
    variants = [json.loads(v) for v in rest[quick:]]
    torch.set_num_threads(1)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    n_train, n_val, n_test = (600, 300, 500) if quick else (1200, 600, 1500)  # protect.py's sizes
    s = Setting(names=list(TASKS), n_train=n_train, n_val=n_val, n_test=n_test)
    recipe = MODE_RECIPES["lora"]
    torch.manual_seed(seed)  # protect.py's order: the plain updates of every task, in TASKS order
    plain = {t: train_plain(s, t, recipe=recipe, seed=seed) for t in s.names}
    delta = {t: {k: plain[t].state[k] - s.base_state[k] for k in s.top_names} for t in s.names}
    others = [delta[t] for t in s.names if t != PROTECTED]
    proxy, proxy_seconds = _proxy_delta(Context(setting=s, recipe=recipe, seed=seed, plain=plain), PROTECTED)
    runs = json.loads(OUT.read_text()) if OUT.exists() else {}
    prefix = f"seed{seed}" + ("/quick" if quick else "")

    def measure(d: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        return {"sweep": {f"{x:g}": accuracy_of(s, [(x, d)]) for x in SCALES},
                "proxy_merge": {f"{x:g}": accuracy_of(s, [(x, d), (x, proxy)]) for x in SCALES},
                "task_arithmetic": {f"{x:g}": accuracy_of(s, [(x, d), *((x, o) for o in others)]) for x in SCALES}}

    runs[f"{prefix}/plain"] = {"zero_shot": accuracy_of(s, []), "proxy_task": PROXY_TASK,
                               "proxy_seconds": proxy_seconds, **measure(delta[PROTECTED])}
    print(prefix, "plain", json.dumps(runs[f"{prefix}/plain"]), flush=True)
    for v in variants:
        t0 = time.perf_counter()
        own = {k: x for k, x in v.items() if k != "proxy_task"}
        used, used_seconds = [proxy], proxy_seconds
        if "proxy_task" in v:  # the protector's own runs of attacker's tasks (not the attacker's runs)
            names = [v["proxy_task"]] if isinstance(v["proxy_task"], str) else v["proxy_task"]
            again = [train_plain(s, t, recipe=recipe, seed=seed + 1000) for t in names]
            used = [{k: a.state[k] - s.base_state[k] for k in s.top_names} for a in again]
            used_seconds = sum(a.seconds for a in again)
        prot = train_trap2(s, PROTECTED, plain[PROTECTED], recipe=recipe.with_(**own), seed=seed,
                           proxies=used if v.get("proxy_mix") else None)
        d = {k: prot.state[k] - s.base_state[k] for k in s.top_names}
        measured = measure(d)
        measured["proxy_merge"] = {f"{x:g}": accuracy_of(s, [(x, d), *((x, u) for u in used)]) for x in SCALES}
        runs[f"{prefix}/{json.dumps(v, sort_keys=True)}"] = {
            "variant": v, "kept": prot.result.selected, "seconds": time.perf_counter() - t0, **measured,
            "proxy_seconds": used_seconds, "trap_seconds": prot.seconds,  # proxies: trained once per base
            "time_ratio": (plain[PROTECTED].seconds + prot.seconds + used_seconds) / plain[PROTECTED].seconds}
        print(prefix, json.dumps(v), json.dumps(runs[f"{prefix}/{json.dumps(v, sort_keys=True)}"]), flush=True)
        atomic_write_json(OUT, dict(sorted(runs.items())))
    atomic_write_json(OUT, dict(sorted(runs.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
