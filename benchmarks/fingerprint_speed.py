"""Fingerprinting speed of this tree against a baseline git ref, on the zoo's model kinds and on large local
checkpoints, and whether terms agree.

Builds (once, into --out) tiny models of the zoo's families with real tokenizers (llama with a byte-level BPE,
gpt2, a BERT with MiniLM's WordPiece vocabulary; tests/support/factory.py) and uses the real all-MiniLM-L6-v2.
`--checkpoint NAME=PATH` adds large checkpoints (e.g. the 1B / 7B Llama-layout folders benchmarks/remote.py builds
into benchmarks/out/remote-checkpoints). Then, for the baseline (`git archive REF`, extracted to a temporary folder)
and for this tree, alternately (--rounds of each, so drift in machine load hits both alike), a subprocess with one
thread fingerprints each model; the best CPU time and wall time per model are kept, and the fingerprints' terms of
the two trees are compared (the tensors both hold; names only one holds are listed). Two readings per model:

- default: `hubguard.fingerprint(path)` as a user calls it (the reading budget picks layers and what of them to
  read; for large checkpoints that is query/key head slices);
- full layers (checkpoints only): every tensor of --full-layers layers (budget None).

Per reading: total CPU, and CPU per layer = the CPU of the layer loop (reading, canonicalising and computing the
terms of every layer: the time `ModelWeights.layers`, which both trees have, is running or suspended in the
fingerprint's loop body) over the layers; fixed costs (tokenizer, token rows, their decorrelation) are outside it.

Prints one JSON object (benchmarks/results/fingerprint_speed.json):

    python benchmarks/fingerprint_speed.py --baseline 0c1ae25 \
        --checkpoint 1b=benchmarks/out/remote-checkpoints/llama-1b --checkpoint 7b=benchmarks/out/remote-checkpoints/llama-7b
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_TIMER = r"""
import json, sys, time, resource
import torch
torch.set_num_threads(1)
import hubguard
from hubguard.lineage.fingerprint_files import save_fingerprint
from hubguard.weights.model import ModelWeights
jobs, repeats, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
loop_cpu = []
layers_of = ModelWeights.layers
def timed_layers(self, plan, **kwargs):  # both trees: the fingerprint's per-layer work runs while this is suspended
    t0 = time.process_time()
    yield from layers_of(self, plan, **kwargs)
    loop_cpu.append(time.process_time() - t0)
ModelWeights.layers = timed_layers
result = {}
for job in jobs:
    hubguard.fingerprint(job["path"], **job["kwargs"])  # warm: file cache, lazy imports
    cpu, wall, loop = [], [], []
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fp = hubguard.fingerprint(job["path"], **job["kwargs"])
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall.append(time.perf_counter() - t0)
        cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        loop.append(loop_cpu[-1])
    if job["save"]:
        save_fingerprint(fp, f"{out}/{job['name']}.safetensors")
    result[job["name"]] = {"cpu_s": min(cpu), "wall_s": min(wall), "layer_loop_cpu_s": min(loop), "layers": len(fp.layers),
                           "tokens": len(fp.tokens), "mode": fp.stats["plan"].get("mode")}
print(json.dumps(result))
"""


def build_models(out: Path) -> dict[str, str]:
    """The zoo's model kinds, built once (deterministic seeds)."""
    from tokenizers import Tokenizer

    from tests.support.factory import build_model, family_configs, minilm_dir, save_with_tokenizer, train_bpe_tokenizer

    models = {"minilm": str(minilm_dir())}
    tok = out / "tokenizer" / "tokenizer.json"
    if not tok.exists():
        train_bpe_tokenizer(tok.parent)
    configs = family_configs(bpe_vocab=Tokenizer.from_file(str(tok)).get_vocab_size(),
                             wordpiece_vocab=Tokenizer.from_file(str(minilm_dir() / "tokenizer.json")).get_vocab_size())
    for family in ("llama", "gpt2", "bert"):
        config, kind = configs[family]
        folder = out / family
        if not (folder / "model.safetensors").exists():
            save_with_tokenizer(build_model(config, seed=0), folder, tokenizer_json=tok if kind == "bpe" else None,
                                wordpiece_dir=None if kind == "bpe" else minilm_dir())
        models[family] = str(folder)
    return models


def _commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def time_tree(tree: Path, jobs: list[dict], *, repeats: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "HUBGUARD_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "-c", _TIMER, json.dumps(jobs), str(repeats), str(out)], env=env,
                          cwd=tree, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"timing {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def terms_difference(a: Path, b: Path) -> dict[str, object]:
    """The largest difference of the tensors both saved fingerprints hold (same name and shape), and the names
    only one of them holds (a newer fingerprint version adds terms)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    common = [k for k in ta if k in tb and ta[k].shape == tb[k].shape]
    return {
        "max_term_difference": max((float((ta[k].float() - tb[k].float()).abs().max()) for k in common), default=float("inf")),
        "common_tensors": len(common),
        "only_baseline": sorted(k for k in ta if k not in common),
        "only_current": sorted(k for k in tb if k not in common),
    }


def plan_jobs(models: dict[str, str], checkpoints: dict[str, str], *, full_layers: int) -> list[dict]:
    """Per model the default call; per checkpoint also `full_layers` whole layers."""
    jobs = [{"name": n, "path": p, "kwargs": {}, "save": True} for n, p in {**models, **checkpoints}.items()]
    jobs += [{"name": f"{name}@full", "path": path, "kwargs": {"layers": list(range(full_layers)), "budget": None},
              "save": False} for name, path in checkpoints.items()]
    return jobs


def best_of(rounds: list[dict]) -> dict:
    """Per job, the fastest round's CPU, layer-loop CPU and wall time (the facts of the last round otherwise)."""
    return {name: {**rounds[-1][name], **{k: min(r[name][k] for r in rounds) for k in ("cpu_s", "wall_s", "layer_loop_cpu_s")}}
            for name in rounds[0]}


def _per_layer(b: dict, c: dict) -> dict:
    base, cur = b["layer_loop_cpu_s"] / b["layers"], c["layer_loop_cpu_s"] / c["layers"]
    return {"baseline_cpu_per_layer_s": round(base, 4), "current_cpu_per_layer_s": round(cur, 4),
            "per_layer_ratio": round(cur / max(base, 1e-9), 3)}


def rows_for(name: str, b: dict, c: dict, *, tmp: Path) -> dict:
    row = {"baseline_cpu_s": round(b[name]["cpu_s"], 3), "current_cpu_s": round(c[name]["cpu_s"], 3),
           "baseline_wall_s": round(b[name]["wall_s"], 3), "current_wall_s": round(c[name]["wall_s"], 3),
           "cpu_ratio": round(c[name]["cpu_s"] / max(b[name]["cpu_s"], 1e-9), 3), "layers": c[name]["layers"],
           "tokens": c[name]["tokens"], "mode": c[name]["mode"], **_per_layer(b[name], c[name]),
           **terms_difference(tmp / "fp-baseline" / f"{name}.safetensors", tmp / "fp-current" / f"{name}.safetensors")}
    if f"{name}@full" in c:
        row["full_layer"] = {"layers": c[f"{name}@full"]["layers"], **_per_layer(b[f"{name}@full"], c[f"{name}@full"])}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git ref of the baseline tree (e.g. main or a commit)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "speed-models"))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per model in each round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating baseline / this-tree rounds")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="a large local checkpoint")
    ap.add_argument("--full-layers", type=int, default=3, help="whole layers read for the full-layer cost")
    args = ap.parse_args()
    if args.full_layers < 1 or any("=" not in c for c in args.checkpoint):
        raise SystemExit("--full-layers must be at least 1 and each --checkpoint NAME=PATH")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(out)
    checkpoints = {name: str(Path(p).resolve()) for name, p in (c.split("=", 1) for c in args.checkpoint)}
    jobs = plan_jobs(models, checkpoints, full_layers=args.full_layers)
    with tempfile.TemporaryDirectory(prefix="hubguard-baseline-") as tmp:
        base_tree = Path(tmp) / "tree"
        base_tree.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "hubguard"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive.stdout, check=True)
        rounds: dict[str, list[dict]] = {"baseline": [], "current": []}
        for _ in range(args.rounds):
            rounds["baseline"].append(time_tree(base_tree, jobs, repeats=args.repeats, out=Path(tmp) / "fp-baseline"))
            rounds["current"].append(time_tree(ROOT, jobs, repeats=args.repeats, out=Path(tmp) / "fp-current"))
        b, c = best_of(rounds["baseline"]), best_of(rounds["current"])
        rows = {name: rows_for(name, b, c, tmp=Path(tmp)) for name in {**models, **checkpoints}}
    dirty = subprocess.run(["git", "status", "--porcelain", "hubguard"], cwd=ROOT, capture_output=True, text=True).stdout
    print(json.dumps({"baseline": _commit(args.baseline), "current": _commit("HEAD"), "current_dirty": bool(dirty.strip()),
                      "repeats": args.repeats,
                      "rounds": args.rounds, "threads": 1, "load_avg_1m": round(os.getloadavg()[0], 2),
                      "cpu_cores": os.cpu_count(), "models": rows}, indent=2))


if __name__ == "__main__":
    main()
