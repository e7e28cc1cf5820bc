"""Scale-lock probe on one task of benchmarks/protect.py: how the gain g and the choice of lock directions shape the
trap, and what bfloat16 does to the exactness at s = 1. Chose the defaults of hubguard.protect.lock (g = 100,
directions from calibration activations).

    .venv/bin/python benchmarks/protect_lock_probe.py [--task code_language] [--seed 0] [--out result.json]

Trains the task's plain LoRA update exactly as benchmarks/protect.py does, locks it with each setting, and prints
JSON: test accuracy of W0 + s·ΔW at each scale; at s = 1 also with the model cast to bfloat16, and with the
weights merged in bfloat16 (W0 and ΔW each rounded, as a bf16 merge_and_unload does) and computed in float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protect import Classifier, one_task  # noqa: E402

from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402

SCALES = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0)
GAINS = (10.0, 30.0, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="code_language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    setup = one_task(args.task)
    base, data, train, head = setup.base, setup.data, setup.batches, setup.head

    def acc(model, split, dtype=torch.float32):
        clf = Classifier(model.to(dtype), head.to(dtype)).eval()
        with torch.no_grad():
            out = clf(input_ids=data[split]["input_ids"], attention_mask=data[split]["attention_mask"])
        return round(100 * float((out.logits.argmax(-1) == data[split]["labels"]).float().mean()), 1)

    # The plain update, as benchmarks/protect.py trains it (LoRA r = 16 on q/k/v/o, early stopping on validation).
    plain = ProtectConfig(mode="lora", lam=0.0, lora_r=16, learning_rate=3e-3, epochs=12, batch_size=16,
                          early_stopping_patience=2, seed=args.seed)
    torch.manual_seed(args.seed)
    enc = attach_lora(copy.deepcopy(base), config=plain)
    clf = Classifier(enc, head)
    torch.manual_seed(args.seed)
    train_protected(clf, train_batches=train, config=plain, val_score_fn=lambda mm: acc(mm.encoder, "val"))
    tuned = {k: v.detach().clone() for k, v in enc.merge_and_unload().state_dict().items()}
    w0 = base.state_dict()
    merged = copy.deepcopy(base)
    merged.load_state_dict(tuned)

    def model_at(state, s=1.0, bf16_merge=False):
        model = copy.deepcopy(base)
        if bf16_merge:
            model.load_state_dict({k: (w0[k].bfloat16() + (v - w0[k]).bfloat16()).float() if v.is_floating_point()
                                   else v for k, v in state.items()})
        else:
            model.load_state_dict({k: w0[k] + s * (v - w0[k]) if v.is_floating_point() else v for k, v in state.items()})
        return model

    def report(state):
        return {"test_by_scale": {str(s): acc(model_at(state, s), "test") for s in SCALES},
                "bf16_model_at_1": acc(model_at(state), "test", torch.bfloat16),
                "bf16_merged_weights_at_1": acc(model_at(state, bf16_merge=True), "test")}

    calibration = [{k: v for k, v in b.items() if k != "labels"} for b in train[:8]]
    runs = {"plain": report(tuned)}
    print(json.dumps({"plain": runs["plain"]}), file=sys.stderr, flush=True)
    for directions in ("calibrated", "data-free"):
        for g in GAINS:
            plan = plan_lock(merged, config=LockConfig(gain=g), calibration=calibration if directions == "calibrated"
                             else None)
            name = f"g={g:g} {directions}"
            runs[name] = report(lock_state_dict(tuned, plan))
            print(json.dumps({name: runs[name]}), file=sys.stderr, flush=True)
    result = {"task": args.task, "seed": args.seed, "metric": "test accuracy %", "scales": list(SCALES),
              "base_test": acc(copy.deepcopy(base), "test"), "runs": runs, "seconds": time.perf_counter() - start,
              "threads": torch.get_num_threads()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
