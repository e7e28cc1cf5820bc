"""Trap² trajectory probe on one task of benchmarks/protect.py: train the plain LoRA update, then continue it with
Trap² and print the validation/test accuracy of W0 + s·ΔW at a few scales every few steps. Used to tune the
benchmark's "continue" regime (its TUNING note quotes these runs).

    .venv/bin/python benchmarks/protect_probe.py '{"task": "code_language", "lam": 1.0, "lr": 2e-3, "steps": 150,
                                                   "every": 15, "project": true}'

Keys: task, lam, lr (Trap² phase), steps, every (steps between prints), project (PCGrad projection), weight
("inv"), exclude ([0.95, 1.05]), scales (printed; [0.3, 0.6, 1.0, 1.5]), seed (0), n_val (200), anchor (weight
of KL(start update's outputs || s = 1 outputs) on each training batch, added to the standalone term, from step
anchor_from; 0), cap_factor (x log(classes), 1.0), per_example (cap each example's loss, not the batch mean;
false), scale_min (0.05), scale_max (2.0), decay_steps (linear lr decay to 0 over them; constant), warmup
(linear lr warm-up steps; 0), plain_lr (3e-3), threads (1), n_train (480). Prints one line per evaluation:
step, seconds, {scale: accuracy} on validation and test.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
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
from hubguard.protect.objective import backward_projected, scaled_in_place, trap2_loss  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402

SCALES = (0.3, 0.6, 1.0, 1.5)


def main() -> None:
    c = json.loads(sys.argv[1])
    torch.set_num_threads(c.get("threads", 1))
    import transformers

    transformers.utils.logging.set_verbosity_error()
    seed = c.get("seed", 0)
    setup = one_task(c.get("task", "code_language"), n_train=c.get("n_train", 480), n_val=c.get("n_val", 200))
    base, task, data, batches, head = setup.base, setup.task, setup.data, setup.batches, setup.head

    def acc(clf, split):
        with torch.no_grad():
            out = clf(input_ids=data[split]["input_ids"], attention_mask=data[split]["attention_mask"])
        return round(100 * float((out.logits.argmax(-1) == data[split]["labels"]).float().mean()), 1)

    def sweep(clf, split):
        clf.eval()
        row = {}
        for s in c.get("scales", SCALES):
            with scaled_in_place(clf, scale=s, mode="lora"):
                row[s] = acc(clf, split)
        clf.train()
        return row

    plain = ProtectConfig(lam=0.0, learning_rate=c.get("plain_lr", 3e-3), epochs=12, batch_size=16,
                          early_stopping_patience=2, seed=seed)
    torch.manual_seed(seed)
    clf = Classifier(attach_lora(copy.deepcopy(base), config=plain), head).eval()
    print(json.dumps({"config": c, "base_test": acc(clf, "test")}), flush=True)
    torch.manual_seed(seed)
    res = train_protected(clf, train_batches=batches, config=plain, val_score_fn=lambda mm: acc(mm, "val"))
    print("plain", res.steps, "val", sweep(clf, "val"), "test", sweep(clf, "test"), flush=True)

    cfg = ProtectConfig(lam=c["lam"], weight=c.get("weight", "inv"), learning_rate=c["lr"], seed=seed,
                        scaled_loss_cap=c.get("cap_factor", 1.0) * math.log(len(task.classes)),
                        project_conflicts=bool(c.get("project")),
                        scale_min=c.get("scale_min", 0.05), scale_max=c.get("scale_max", 2.0),
                        exclude=tuple(c.get("exclude", (0.95, 1.05))),
                        cap_per_example=bool(c.get("per_example")))
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    decay = c.get("decay_steps")  # linear decay of the Trap² lr to 0 over this many steps (None: constant)
    warm = c.get("warmup", 0)  # linear warm-up over this many steps (then the decay, if any)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm if warm else 1.0) * (max(0.0, 1 - i / decay) if decay else 1.0)
    ) if decay or warm else None
    gen = torch.Generator().manual_seed(seed)
    anchor = c.get("anchor", 0.0)  # KL(start update's outputs || s = 1 outputs) on the training batch, added
    if anchor:
        clf.eval()
        with torch.no_grad():
            teacher = [torch.log_softmax(clf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1)
                       for b in batches]
        clf.train()
    step, start = 0, time.perf_counter()
    clf.train()
    while step < c["steps"]:
        for bi, batch in enumerate(batches):
            opt.zero_grad(set_to_none=True)
            out = trap2_loss(clf, batch, config=cfg, generator=gen)
            if anchor and step >= c.get("anchor_from", 0):
                student = torch.log_softmax(clf(input_ids=batch["input_ids"],
                                                attention_mask=batch["attention_mask"]).logits, -1)
                kl = torch.nn.functional.kl_div(student, teacher[bi], log_target=True, reduction="batchmean")
                term = out.standalone_term + anchor * kl
                out = dataclasses.replace(out, standalone_term=term, loss=term - out.trap_term)
            backward_projected(out, params) if cfg.project_conflicts else out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            if step % c.get("every", 15) == 0:
                print(step, round(time.perf_counter() - start), "val", sweep(clf, "val"), "test", sweep(clf, "test"),
                      flush=True)
            if step >= c["steps"]:
                break


if __name__ == "__main__":
    main()
