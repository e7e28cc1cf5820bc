"""Trap² objective in isolation on the benchmark's real setting: one task, plain vs protected LoRA on the real
all-MiniLM-L6-v2, then validation/test loss and accuracy of W0 + s·ΔW for each s. Used to tune
benchmarks/protect.py (its TUNING note quotes these runs).

    TASK=man_section .venv/bin/python benchmarks/protect_probe.py \\
        '[{"lam": 0, "lr": 3e-3, "epochs": 6}, {"lam": 0.3, "lr": 3e-3, "epochs": 12, "cap": 3.6, "noval": 1}]'

Each config: lam, lr, epochs; optional weight ("inv"), logit (head scale, 20), eval_every, patience (early
stopping on the s = 1 validation loss, restoring the best state), cap (scaled_loss_cap), noval (1: no
validation, keep the final state). Prints one JSON line per config, then the sweep.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protect import MAX_LEN, Classifier, minilm_folder  # noqa: E402
from protect_tasks import build_tasks  # noqa: E402

from hubguard.protect.audit import scaled_in_place  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402

SCALES = (0.0, 0.3, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0)


class ScaledHead(Classifier):
    """The benchmark's classifier with a configurable logit scale (20 in the benchmark, 100 in CLIP)."""

    logit_scale = 20.0

    def forward(self, input_ids, attention_mask, labels=None):
        logits = super().forward(input_ids, attention_mask).logits / 20.0 * self.logit_scale
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def main() -> None:
    torch.set_num_threads(1)
    import transformers
    from transformers import AutoTokenizer, BertModel

    transformers.utils.logging.set_verbosity_error()
    configs = json.loads(sys.argv[1])
    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(str(folder))
    base = BertModel.from_pretrained(str(folder)).eval()
    (task,) = build_tasks(n_train=240, n_val=48, n_test=96, names=[os.environ.get("TASK", "man_section")], seed=0)

    def encode(items):
        e = tok([t for t, _ in items], padding="max_length", truncation=True, max_length=MAX_LEN,
                return_tensors="pt")
        return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"],
                "labels": torch.tensor([y for _, y in items])}

    data = {k: encode(getattr(task, k)) for k in ("train", "val", "test")}

    def batches(split, size):
        n = len(split["labels"])
        return [{k: v[i : i + size] for k, v in split.items()} for i in range(0, n, size)]

    with torch.no_grad():
        tr = data["train"]
        h = base(input_ids=tr["input_ids"], attention_mask=tr["attention_mask"]).last_hidden_state
        m = tr["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
        cent = torch.stack([emb[tr["labels"] == c].mean(0) for c in range(len(task.classes))])
        head = torch.nn.functional.normalize(cent, dim=-1)

    def sweep(clf):
        clf.eval()
        rows = {}
        for s in SCALES:
            with scaled_in_place(clf, scale=s, mode="lora"), torch.no_grad():
                row = {}
                for split in ("val", "test"):
                    out = clf(**data[split])
                    acc = 100 * float((out.logits.argmax(-1) == data[split]["labels"]).float().mean())
                    row[split] = (round(float(out.loss), 3), round(acc, 1))
                rows[s] = row
        return rows

    for c in configs:
        t0 = time.perf_counter()
        cfg = ProtectConfig(mode="lora", lam=c["lam"], weight=c.get("weight", "inv"), lora_r=16,
                            learning_rate=c["lr"], epochs=c["epochs"], batch_size=16,
                            early_stopping_patience=c.get("patience", 2), seed=0, scaled_loss_cap=c.get("cap"),
                            eval_every=c.get("eval_every"))
        clf = ScaledHead(attach_lora(copy.deepcopy(base), config=cfg), head)
        clf.logit_scale = c.get("logit", 20.0)
        torch.manual_seed(0)
        res = train_protected(clf, train_batches=batches(data["train"], 16), config=cfg,
                              val_batches=None if c.get("noval") else batches(data["val"], 96))
        b_norm = sum(float(p.detach().norm() ** 2) for n, p in clf.named_parameters() if "lora_B" in n) ** 0.5
        tail = res.history[-15:]
        print(json.dumps({
            "cfg": c, "steps": res.steps, "stopped": res.stopped_early, "sec": round(res.seconds),
            "Bnorm": round(b_norm, 3), "train_stand": round(sum(r["standalone"] for r in tail) / len(tail), 3),
            "train_scaled": round(sum(r["scaled"] for r in tail) / len(tail), 3) if c["lam"] > 0 else None,
            "vals": [round(r["val"], 3) for r in res.history if "val" in r]}), flush=True)
        for s, r in sweep(clf).items():
            print(f"   s={s:<4} val loss/acc {r['val']}  test loss/acc {r['test']}", flush=True)
        print(f"   total {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
