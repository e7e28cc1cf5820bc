"""Tuning probe of benchmarks/protect.py: one task, one seed; the plain update, then each protection variant (a JSON
object of protect_train.Recipe overrides) continuing it, with the test accuracy of W0 + s·ΔW at a few scales.

    python benchmarks/protect_probe.py code_language 1 '{"lam": 2.0}' '{"distill": 1.0}'
    python benchmarks/protect_probe.py code_language 0 --mode full '{"trap_lr": 1e-4}'   # full fine-tuning
    python benchmarks/protect_probe.py code_language 0 --quick '{"trap_lr": 6e-3}'      # protect.py --quick's sizes

Each run is added to benchmarks/results/protect_probe.json under "<task>/seed<k>[/full][/quick]/<variant>" (the plain update
under "<task>/seed<k>[/full][/quick]/plain"): steps, seconds, the validation checkpoints (step, s = 1 score, probe score), the kept one,
and the test sweep. The recipe choices of protect.py cite these runs.
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
from protect_setup import Setting  # noqa: E402
from protect_train import Recipe, train_plain, train_trap2  # noqa: E402

from hubguard.utils.files import atomic_write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "protect_probe.json"
SCALES = (0.3, 0.5, 0.7, 1.0, 1.5)


def sweep(s: Setting, state: dict, task: str) -> dict[str, float]:
    b = s.base_state
    return {f"{x:g}": round(s.accuracy(s.load({k: b[k] + x * (v - b[k]) for k, v in state.items()}), task, "test"), 2)
            for x in SCALES}


def record(key: str, value: dict) -> None:
    runs = json.loads(OUT.read_text()) if OUT.exists() else {}
    runs[key] = value
    atomic_write_json(OUT, dict(sorted(runs.items())))


def main(argv: list[str]) -> None:
    task, seed, rest = argv[0], int(argv[1]), argv[2:]
    mode, quick = "lora", False
    while rest[:1] in (["--mode"], ["--quick"]):
        if rest[0] == "--quick":
            quick, rest = True, rest[1:]
        else:
            mode, rest = rest[1], rest[2:]
    variants = [json.loads(v) for v in rest]
    torch.set_num_threads(1)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    n_train, n_val, n_test = (600, 300, 500) if quick else (1200, 600, 1500)  # protect.py's sizes
    s = Setting(names=[task], n_train=n_train, n_val=n_val, n_test=n_test)
    from protect import MODE_RECIPES

    base_recipe = MODE_RECIPES[mode] if mode in MODE_RECIPES else Recipe(mode=mode)
    plain = train_plain(s, task, recipe=base_recipe, seed=seed)
    prefix = f"{task}/seed{seed}" + ("" if mode == "lora" else f"/{mode}") + ("/quick" if quick else "")
    record(f"{prefix}/plain", {"steps": plain.result.steps, "seconds": plain.seconds, "val": plain.result.selected,
                               "sweep": sweep(s, plain.state, task),
                               "zero_shot": round(s.accuracy(s.base, task, "test"), 2)})
    print(prefix, "plain", plain.result.steps, plain.result.selected, sweep(s, plain.state, task), flush=True)
    for v in variants:
        t0 = time.perf_counter()
        prot = train_trap2(s, task, plain, recipe=base_recipe.with_(**v), seed=seed)
        hist = [[r["step"], None if r["val_standalone"] is None else round(r["val_standalone"], 2),  # None: not scored
                 round(r["val_trap"], 2)] for r in prot.result.history if "val_trap" in r]
        out = {"variant": v, "steps": prot.result.steps, "seconds": time.perf_counter() - t0,
               "cpu_seconds": prot.seconds, "time_ratio": (plain.seconds + prot.seconds) / plain.seconds,
               "kept": prot.result.selected, "validation": hist, "sweep": sweep(s, prot.state, task)}
        record(f"{prefix}/{json.dumps(v, sort_keys=True)}", out)
        print(prefix, json.dumps(v), out["kept"]["step"], hist, out["sweep"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
