"""Fingerprinting speed of this tree against a baseline git ref, on the zoo's model kinds, and whether terms agree.

Builds (once, into --out) tiny models of the zoo's families with real tokenizers (llama with a byte-level BPE,
gpt2, a BERT with MiniLM's WordPiece vocabulary; tests/support/factory.py) and uses the real all-MiniLM-L6-v2.
Then, for the baseline (`git archive REF`, extracted to a temporary folder) and for this tree, a subprocess with
one thread fingerprints each model `--repeats` times; the best CPU time and wall time per model are kept, and the
fingerprints' terms of the two trees are compared (the tensors both hold; names only one holds are listed).
Prints one JSON object (benchmarks/results/fingerprint_speed.json):

    python benchmarks/fingerprint_speed.py --baseline 8f8e49b
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
models, repeats, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
result = {}
for name, path in models.items():
    cpu, wall = [], []
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fp = hubguard.fingerprint(path)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall.append(time.perf_counter() - t0)
        cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    save_fingerprint(fp, f"{out}/{name}.safetensors")
    result[name] = {"cpu_s": round(min(cpu), 3), "wall_s": round(min(wall), 3), "layers": len(fp.layers),
                    "tokens": len(fp.tokens)}
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


def time_tree(tree: Path, models: dict[str, str], *, repeats: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "HUBGUARD_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "-c", _TIMER, json.dumps(models), str(repeats), str(out)], env=env,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git ref of the baseline tree (e.g. main or a commit)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "speed-models"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(out)
    with tempfile.TemporaryDirectory(prefix="hubguard-baseline-") as tmp:
        base_tree = Path(tmp) / "tree"
        base_tree.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "hubguard"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive.stdout, check=True)
        baseline = time_tree(base_tree, models, repeats=args.repeats, out=Path(tmp) / "fp-baseline")
        current = time_tree(ROOT, models, repeats=args.repeats, out=Path(tmp) / "fp-current")
        rows = {}
        for name in models:
            b, c = baseline[name], current[name]
            rows[name] = {"baseline_cpu_s": b["cpu_s"], "current_cpu_s": c["cpu_s"], "baseline_wall_s": b["wall_s"],
                          "current_wall_s": c["wall_s"], "cpu_ratio": round(c["cpu_s"] / max(b["cpu_s"], 1e-9), 3),
                          "layers": c["layers"], "tokens": c["tokens"],
                          **terms_difference(Path(tmp) / "fp-baseline" / f"{name}.safetensors",
                                             Path(tmp) / "fp-current" / f"{name}.safetensors")}
    print(json.dumps({"baseline": _commit(args.baseline), "current": _commit("HEAD"), "repeats": args.repeats,
                      "threads": 1, "models": rows}, indent=2))


if __name__ == "__main__":
    main()
