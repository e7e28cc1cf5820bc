"""Trap² in the paper's LLM setting, at tiny scale: a causal-LM LoRA (r = 32, alpha = r, q/k/v/o) on a trained
zoo Llama base, w(s) = 1/√s, tasks scored by exact match, merged with the real tools.

- Base: the lineage zoo's `llama-s0` (benchmarks/zoo.py: RMSNorm, gated SiLU, GQA, RoPE; hidden 128, 4 layers,
  vocabulary 4096, trained from scratch on the Python documentation). Built with
  `python benchmarks/zoo.py --out benchmarks/out/zoo --only llama-s0` if absent.
- Tasks (exact match of the next word of real text): the windows of three tasks of the frozen snapshot
  benchmarks/data/protect_tasks_v2.jsonl.gz (protect_tasks.py), each a text domain: man_section (English man
  pages), doc_kind (Debian changelogs, copyright files, READMEs), python_package (Python standard-library source).
  An example is CONTEXT words of a window and the word after them; exact match = every token of that word is the
  model's argmax given the context (what greedy decoding of it produces: one teacher-forced forward). Training
  uses the positions TRAIN_POSITIONS of each training window; validation and test one position per window (600 /
  1500 examples), windows from other source files than training's (the snapshot's splits).
- One LoRA per task, trained plainly with early stopping on validation exact match; the protected task's
  (man_section) is then protected (`--methods`, METHODS below: trap2, Trap² continuing it, w(s) = 1/√s; lock;
  trap2+lock; trap2-public, Trap² trained at merges with the protector's own runs of the two public tasks, as
  benchmarks/protect.py's design of that name; trap2-public+lock) and merged with the other two
  (hubguard.protect.attacks: task_arithmetic, ties, dare_ties, realign), the coefficient chosen on the attacker's
  validation examples (mean exact match over the three tasks). The attacker merges its own runs of the public tasks
  (seed k); the protector's proxies are other runs of them (seed k + 1000, the same recipe), never the attacker's.

    python benchmarks/protect_llm.py --seeds 0,1,2,3,4     # results/protect_llm_seed<k>.json, then protect_llm.json
    python benchmarks/protect_llm.py --quick --seeds 0,1,2,3,4   # results/protect_llm_quick_seed<k>.json, ..._quick.json
    python benchmarks/protect_llm.py --seeds 0,1,2,3,4 --methods trap2-public,trap2-public+lock --tag _proxies
                                                           # results/protect_llm_proxies_seed<k>.json, ..._proxies.json
    python benchmarks/protect_llm.py --quick --seeds 0,1,2,3,4 --attacks all --tag _adaptive \
        --methods none,trap2,lock,trap2+lock,trap2-public,trap2-public+lock   # results/protect_llm_adaptive_quick*.json

`--attacks` (default the merges and realign): `all` adds the adaptive attacks of hubguard.protect.attacks (SLERP,
the protected update kept at 1, a re-fine-tune of it on the protected task's training examples, fine-tuning after the
merge, learned per-layer coefficients, RegMean), whose attacker trains a copy of the base with the causal-LM loss on
its own validation examples (`--attacker-val` per task) at `--attacker-lr`. The composed attacks realign+NAME
(realign first, then NAME; hubguard.protect.attacks.COMPOSED_ATTACKS) are run only when named:

    python benchmarks/protect_llm.py --quick --seeds 4,0,1,2,3 --methods trap2-public+lock --retries 1 --without-update \
        --tag _composed --attacks task_arithmetic,ties,dare_ties,realign,kept_at_1,finetune_after_merge,learned,regmean,\
realign+kept_at_1,realign+refinetune,realign+finetune_after_merge,realign+learned,realign+regmean
                                                                            # results/protect_llm_composed_quick*.json
    python benchmarks/protect_llm.py --quick --seeds 0,1,2,3,4 --methods trap2-public,trap2-public+lock \
        --realign-mix 0.5 --probe-limit 150 --retries 1 --attacks task_arithmetic,ties,dare_ties,realign,learned,regmean \
        --tag _realign_mix                                          # realign in the loop: results/protect_llm_realign_mix_quick*.json
    # the same with --realign-mix 0.25 --tag _realign_mix25: results/protect_llm_realign_mix25_quick*.json
    python benchmarks/protect_llm.py --quick --seeds 0,1,2,3,4 --methods trap2-public --trap-budget 0.45 \
        --probe-limit 150 --tag _fast                          # a cheaper Trap²: results/protect_llm_fast_quick*.json
    python benchmarks/protect_llm.py --quick --seeds 0,1,2,3,4 --methods trap2-public,trap2-public+lock --retries 1 \
        --trap-fraction 0.5 --attacks all --tag _half    # trap passes on half the batch: results/protect_llm_half_quick*.json
    python benchmarks/protect_llm.py --quick --seeds 0,1,2,3,4 --methods trap2-public,trap2-public+lock --retries 1 \
        --regmean-mix 0.5 --attacks task_arithmetic,ties,dare_ties,realign,slerp,kept_at_1,refinetune,\
finetune_after_merge,learned,regmean,realign+regmean --tag _regmean_mix   # RegMean in the loop (stopped after seeds 0, 1)
    # the same with --regmean-refresh 20 --tag _regmean_refresh             # Grams refreshed (stopped after seed 0)

QUICK (`--quick`): the full setting took 27 minutes for seed 0 on one thread (protect_llm_seed0.json, `seconds`
1635; it predates the `cpu_seconds` field), about a third of it in the attacks' evaluations: too long for five
seeds on a shared machine. --quick keeps the model, the LoRA, the tasks, the protected
task's 1500 test windows (the standalone change's paired interval needs them) and every attack, and shrinks what
costs: QUICK below (half the training and validation windows, so about half the plain and Trap² steps; a coarser
coefficient grid; fewer attacker validation examples; 500 test windows of the two other tasks per merge). Its numbers are the quick setting's, not the full one's.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protect_llm_args import ADAPTIVE, ATTACKS, COMPOSED, MERGES, METHODS, QUICK, parse_args  # noqa: E402, F401
from protect_stats import accuracy_ci, paired_difference  # noqa: E402

from hubguard.protect.attacks import AttackerModel, AttackSetting, run_attacks, without_update_baselines  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock  # noqa: E402
from hubguard.protect.trainer import train_protected  # noqa: E402
from hubguard.utils.files import atomic_write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
ZOO = HERE / "out" / "zoo" / "llama-s0"
RESULTS = HERE / "results"
TASKS = ("man_section", "doc_kind", "python_package")
CONTEXT = 16  # words of context
TRAIN_POSITIONS = (16, 24, 32)  # the word predicted, per training window (40-word windows)
TEST_POSITION = 18  # every window has at least 20 words
MAX_PROMPT = 48  # tokens of context kept (the last ones)
SIZES = {"train": 1200, "val": 600, "test": 1500}  # windows
TRAINED = {"trap2": (), "trap2-public": TASKS[1:]}  # Trap² runs -> the public tasks whose proxies they merge with
# the QUICK setting, the attack lists and the protections: protect_llm_args (with the command line)
PUBLIC_SEED_OFFSET = 1000  # the protector's own runs of the public tasks: seeds the attacker's runs never use


def examples(task: str, sizes: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """(context, " next-word") pairs of each split (`sizes`: windows per split), from the snapshot's windows."""
    from protect_tasks import build_tasks

    t = build_tasks(n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"], names=[task])[0]
    out: dict[str, list[tuple[str, str]]] = {}
    for split in sizes:
        positions = TRAIN_POSITIONS if split == "train" else (TEST_POSITION,)
        rows = []
        for text, _ in getattr(t, split):
            words = text.split()
            rows += [(" ".join(words[p - CONTEXT : p]), " " + words[p]) for p in positions if p < len(words)]
        out[split] = rows
    return out


class LLMSetting:
    """The zoo Llama, its tokenizer, the tasks as padded (input_ids, labels) tensors, exact match of states."""

    def __init__(self, folder: Path = ZOO, sizes: dict[str, int] = SIZES) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (folder / "config.json").is_file():
            raise SystemExit(f"{folder}: no zoo Llama; build it with "
                             "`python benchmarks/zoo.py --out benchmarks/out/zoo --only llama-s0`")
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.base = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        self.base_state = {k: v.detach() for k, v in self.base.state_dict().items()}
        self.work = copy.deepcopy(self.base).eval()
        self.data = {t: {s: self._encode(rows) for s, rows in examples(t, sizes).items()} for t in TASKS}

    def _encode(self, rows: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        ids, labels = [], []
        for prompt, ans in rows:
            p = self.tok(prompt, add_special_tokens=False)["input_ids"][-MAX_PROMPT:]
            a = self.tok(ans, add_special_tokens=False)["input_ids"]
            ids.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, ids))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
                "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels])}

    def batches(self, task: str, split: str, size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
        d = self.data[task][split]
        n = len(d["labels"]) if limit is None else min(limit, len(d["labels"]))
        return [{k: v[i : i + size] for k, v in d.items()} for i in range(0, n, size)]

    @torch.no_grad()
    def correct(self, model: torch.nn.Module, task: str, split: str, limit: int | None = None) -> torch.Tensor:
        """Exact match per example: every answer token is the argmax given the gold prefix. The LM head runs at the
        answer positions only (the logits of every position of 250 padded rows were most of an evaluation's time)."""
        model.eval()
        decoder, head = model.get_decoder(), model.get_output_embeddings()  # through PEFT's wrappers too
        out = []
        for b in self.batches(task, split, 250, limit):
            hidden = decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                             use_cache=False).last_hidden_state[:, :-1]
            gold = b["labels"][:, 1:]
            answer = gold != -100
            hit = torch.ones_like(gold, dtype=torch.bool)
            hit[answer] = head(hidden[answer]).argmax(-1) == gold[answer]
            out.append(hit.all(-1))
        return torch.cat(out)

    def em(self, model: torch.nn.Module, task: str, split: str, limit: int | None = None) -> float:
        return 100.0 * float(self.correct(model, task, split, limit).float().mean())

    def load(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        self.work.load_state_dict(state)
        return self.work

    def attacker(self, args: argparse.Namespace) -> AttackerModel:
        """The adaptive attacker: a trainable copy of the base, the causal-LM loss on the answer tokens, its
        validation examples of every task (args.attacker_val each; learned coefficients, RegMean's activations, the
        fine-tune after the merge) and the protected task's training examples (the re-fine-tune)."""
        return AttackerModel(model=copy.deepcopy(self.base).eval(), loss=lambda m, b: m(**b).loss,
                             data=tuple(self.batches(t, "val", 16, limit=args.attacker_val) for t in TASKS),
                             refit_data=self.batches(TASKS[0], "train", 16), lr=args.attacker_lr, seed=0)


def lora_state(s: LLMSetting, peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = dict(s.base_state)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
                key = name.removeprefix("base_model.model.") + ".weight"
                out[key] = (s.base_state[key] + module.get_delta_weight("default")).detach().clone()
    return out


def proxy_deltas(s: LLMSetting, model: torch.nn.Module, states: list[dict[str, torch.Tensor]]) -> list[dict]:
    """Merged LoRA states of other tasks as train_protected's `proxies`: ΔW [out, in] of each base weight under a
    LoRA layer of `model` (the PEFT model being protected), keyed by its parameter name; zero deltas left out."""
    from hubguard.protect.proxies import proxy_targets

    targets = proxy_targets(model, mode="lora")  # {"base_model.model.<module>.base_layer.weight": "<module>.weight"}
    out = [{n: st[k] - s.base_state[k] for n, k in targets.items() if not torch.equal(st[k], s.base_state[k])}
           for st in states]
    if not all(out):
        raise SystemExit("a proxy run changed none of the protected LoRA's layers")
    return out


def train_task(s: LLMSetting, task: str, *, seed: int, args: argparse.Namespace, init: Any = None,
               proxies: list[dict] | None = None) -> tuple:
    """Plain LoRA (init None) or Trap² continuing `init` (its PEFT model), with `proxies` (proxy_deltas) its trap
    passes all merges with them at c ~ U[args.proxy_scale] and `args.retries` (ProtectConfig.retries); returns
    (peft model, state, result, CPU seconds)."""
    from peft import LoraConfig, get_peft_model

    order = torch.randperm(len(s.data[task]["train"]["labels"]), generator=torch.Generator().manual_seed(seed))
    train = [{k: v[i] for k, v in s.data[task]["train"].items()} for i in order.split(16)]
    if init is None:
        torch.manual_seed(seed)
        model = get_peft_model(copy.deepcopy(s.base), LoraConfig(
            r=32, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            bias="none", task_type="CAUSAL_LM"))
        cfg = ProtectConfig(mode="lora", lam=0.0, lora_r=32, learning_rate=args.lr, epochs=args.epochs, batch_size=16,
                            early_stopping_patience=3, eval_every=args.eval_every, seed=seed)
        kwargs: dict[str, Any] = {}
    else:
        model = copy.deepcopy(init)
        steps = max(6, round(args.trap_budget * args.plain_steps[task]))
        every = max(1, round(steps * 0.5 / 5))
        cfg = ProtectConfig(mode="lora", lam=args.lam, weight="inv_sqrt", lora_r=32, learning_rate=args.trap_lr,
                            epochs=10**6, max_steps=steps, batch_size=16, early_stopping_patience=10**6, seed=seed,
                            selection="trap", tolerance_reference="start", standalone_tolerance=args.tolerance,
                            lr_schedule="linear", eval_every=every, eval_start=max(1, steps - 4 * every),
                            scaled_loss_cap=math.log(len(s.tok)), cap_per_example=True, project_conflicts=True,
                            probe_scales=(0.3, 0.6, 1.5), proxy_mix=1.0 if proxies else 0.0,
                            proxy_scale=tuple(args.proxy_scale), distill=args.distill, retries=args.retries,
                            realign_mix=args.realign_mix, trap_fraction=args.trap_fraction,
                            regmean_mix=args.regmean_mix if proxies else 0.0, regmean_refresh=args.regmean_refresh)
        kwargs = {"probe_score_fn": lambda m: s.em(m, task, "val", limit=args.probe_limit), "proxies": proxies or (),
                  # RegMean's weights of the protector's own runs: their training inputs (the protector has them)
                  "proxy_batches": [s.batches(t, "train", 16) for t in TASKS[1:]] if proxies and args.regmean_mix
                  else ()}
    t0 = time.process_time()  # CPU seconds of this process (one thread): other jobs share the cores
    res = train_protected(model, train_batches=train, config=cfg, val_score_fn=lambda m: s.em(m, task, "val"),
                          **kwargs)
    return model, lora_state(s, model), res, time.process_time() - t0


def _trap_runs(s: LLMSetting, args: argparse.Namespace, seed: int, plain: dict, log: Any) -> dict[str, dict]:
    """The Trap² runs `args.methods` need (TRAINED): {name: {"state", "seconds" (with its proxies' training),
    "proxy_seconds", "result"}}; trap2-public first trains the protector's own runs of the public tasks."""
    p, runs = TASKS[0], {}
    for name, public in TRAINED.items():
        if not any(m.split("+")[0] == name for m in args.methods):
            continue
        own = {t: train_task(s, t, seed=seed + PUBLIC_SEED_OFFSET, args=args) for t in public}
        for t, r in own.items():
            log(f"seed {seed}: {name}: own {t} run (seed {seed + PUBLIC_SEED_OFFSET}): {r[2].steps} steps {r[3]:.0f}s")
        proxies = proxy_deltas(s, plain[p][0], [r[1] for r in own.values()]) if own else None
        trap = train_task(s, p, seed=seed, args=args, init=plain[p][0], proxies=proxies)
        log(f"seed {seed}: {name} {p}: {trap[2].steps} steps {trap[3]:.0f}s, kept {trap[2].selected}"
            + (f", attempts {list(trap[2].attempts)}" if args.retries else ""))
        proxy_seconds = sum(r[3] for r in own.values())
        runs[name] = {"state": trap[1], "seconds": trap[3] + proxy_seconds, "proxy_seconds": proxy_seconds,
                      "result": trap[2], "own_runs": {t: {"steps": r[2].steps, "seconds": r[3], "val": r[2].selected}
                                                      for t, r in own.items()},
                      **({"attempts": list(trap[2].attempts)} if args.retries else {})}
    return runs


def run_seed(s: LLMSetting, args: argparse.Namespace, seed: int, log: Any) -> dict[str, Any]:
    p = TASKS[0]
    plain = {}
    args.plain_steps = {}
    for t in TASKS:
        plain[t] = train_task(s, t, seed=seed, args=args)
        args.plain_steps[t] = plain[t][2].steps
        log(f"seed {seed}: plain {t}: {plain[t][2].steps} steps {plain[t][3]:.0f}s, val {plain[t][2].selected}")
    traps = _trap_runs(s, args, seed, plain, log)
    split = s.data[p]["train"]
    calib = [{"input_ids": split["input_ids"][i : i + 16], "attention_mask": split["attention_mask"][i : i + 16]}
             for i in range(0, 128, 16)]

    def locked(state: dict) -> dict:
        model = copy.deepcopy(s.base)
        model.load_state_dict(state)
        return lock_state_dict(state, plan_lock(model, config=LockConfig(), calibration=calib, for_lora=True))

    released = {}  # method -> (state, CPU seconds on top of the plain update, proxies' share of them)
    for method in args.methods:
        trained, lock_it = method.removesuffix("+lock"), method.endswith("+lock") or method == "lock"
        run = traps.get(trained)
        state, extra, proxy = (plain[p][1], 0.0, 0.0) if run is None else (run["state"], run["seconds"],
                                                                             run["proxy_seconds"])
        released[method] = (locked(state) if lock_it else state, extra, proxy)
    zero = s.correct(s.base, p, "test")
    plain_correct = s.correct(s.load(plain[p][1]), p, "test")
    out: dict[str, Any] = {"zero_shot": {t: s.em(s.base, t, "test") for t in TASKS}, "zero_shot_ci": accuracy_ci(zero),
                           "plain": {t: {"steps": plain[t][2].steps, "seconds": plain[t][3],
                                         "val": plain[t][2].selected} for t in TASKS},
                           "traps": {m: {"steps": r["result"].steps, "selected": r["result"].selected,
                                         "seconds": r["seconds"], "proxy_seconds": r["proxy_seconds"],
                                         "own_runs": r["own_runs"], **({"attempts": r["attempts"]} if "attempts" in r
                                                                       else {})}
                                     for m, r in traps.items()}, "methods": {}}
    if "trap2" in traps:
        out["trap2"] = {k: out["traps"]["trap2"][k] for k in ("steps", "selected")}
    # one attacker for every protection of the seed: each attack loads the full state it starts from
    attacker = s.attacker(args) if set(args.attack_list) - set(ATTACKS) else None

    def attack_setting(state: dict) -> AttackSetting:
        return AttackSetting(
            base=s.base_state, protected=state, others=tuple(plain[t][1] for t in TASKS[1:]),
            val_score=lambda st: sum(s.em(s.load(st), t, "val", limit=args.attacker_val) for t in TASKS) / len(TASKS),
            test_metrics=lambda st: {t: s.em(s.load(st), t, "test", limit=None if t == p else args.others_test)
                                     for t in TASKS}, verdict_key=p,
            coefficients=tuple(args.coefficient_list), model_config=s.base.config.to_dict(), attacker=attacker)

    baselines = None  # --without-update: each attack with the protected update left out, once for every protection
    if args.without_update:
        baselines = without_update_baselines(attack_setting(s.base_state), names=args.attack_list)
        out["without_update"] = {a: {k: b.get(k) for k in ("coefficient", "test", "cpu_seconds")}
                                 for a, b in baselines.items()}
        log(f"seed {seed}: without the update: " + ", ".join(f"{a} {b['test'][p]:.1f}" for a, b in baselines.items()))
    for method, (state, extra, proxy) in released.items():
        correct = s.correct(s.load(state), p, "test")
        attacks = run_attacks(attack_setting(state), names=args.attack_list, baselines=baselines)
        for a in attacks.values():  # what the merge leaves the merger on the other tasks
            a["others"] = sum(a["test"][t] for t in TASKS[1:]) / len(TASKS[1:])
        ratio = (plain[p][3] + extra) / plain[p][3]
        change = paired_difference(correct, plain_correct)
        out["methods"][method] = {
            "standalone": accuracy_ci(correct), "standalone_change": change, "time_ratio": ratio,
            **({"proxy_seconds": proxy, "time_ratio_proxies_amortized": (plain[p][3] + extra - proxy) / plain[p][3]}
               if proxy else {}),
            "sweep": [{"scale": sc, "em": s.em(s.load({k: s.base_state[k] + sc * (v - s.base_state[k])
                                                        for k, v in state.items()}), p, "test", limit=500)}
                      for sc in (0.0, 0.3, 0.5, 0.7, 1.0, 1.5)],
            "attacks": attacks,
            "targets": {"standalone_within_1_point_ci": change["low"] >= -1.0,
                        "standalone_within_1_point": change["value"] >= -1.0,
                        "merged_at_or_below_zero_shot": all(attacks[a]["protected"] for a in MERGES),
                        **({"realign_at_or_below_zero_shot": attacks["realign"]["protected"]}
                           if "realign" in attacks else {}),
                        "time_ratio_at_most_2.2": ratio <= 2.2}}
        log(f"seed {seed}: {method}: standalone {change['value']:+.1f}, "
            + ", ".join(f"{k} {v['protected_score']:.1f}" for k, v in attacks.items()))
    return out


def aggregate(seeds: dict[int, dict[str, Any]], *, quick: bool) -> dict[str, Any]:
    """results/<stem>.json from the seed files (protect_llm_aggregate)."""
    from protect_llm_aggregate import aggregate_seeds

    return aggregate_seeds(seeds, quick=quick, tasks=TASKS, default_attacks=ATTACKS)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    sizes = QUICK["sizes"] if args.quick else SIZES
    stem = f"protect_llm{args.tag}" + ("_quick" if args.quick else "")
    s = LLMSetting(sizes=sizes)
    claims = HERE / "out" / "claims"  # a seed another process is running (parallel jobs sharing one seed list)
    claims.mkdir(parents=True, exist_ok=True)
    for seed in [int(x) for x in args.seeds.split(",")]:
        path = RESULTS / f"{stem}_seed{seed}.json"
        claim = claims / path.name
        if path.exists() or not _claim(claim):
            log(f"seed {seed}: {path.name} exists or is being run, skipped")
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = run_seed(s, args, seed, log)
        finally:
            claim.unlink(missing_ok=True)
        out.update(kind="hubguard-protect-llm-seed", schema_version=1, seed=seed, quick=args.quick,
                   seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                   settings={k: v for k, v in vars(args).items()
                             if k not in ("plain_steps", "coefficient_list", "attack_list")}
                   | {"tasks": list(TASKS), "sizes": sizes, "base_model": "zoo llama-s0", "lora_r": 32,
                      "weight": "inv_sqrt"})
        atomic_write_json(path, out)
        log(f"seed {seed}: wrote {path.name}")
    seeds = {d["seed"]: d for d in (json.loads(p.read_text()) for p in RESULTS.glob(f"{stem}_seed*.json"))}
    if seeds:
        atomic_write_json(RESULTS / f"{stem}.json", aggregate(seeds, quick=args.quick))


if __name__ == "__main__":
    main()
