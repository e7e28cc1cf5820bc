"""Architecture coverage: for every shipped architecture map, what it names (model_types), what the map
describes (attention layout, norms, rotary, MoE), the invariant terms a fingerprint of the family's tiny model
holds, and every output-preserving attack that applies to it, each verified on that tiny model (built by
transformers from `tests/support/factory.py`): logits unchanged, canonical products unchanged (heads and experts
matched), and all attacks at once scored against the untouched model. Prints and writes JSON.

    python benchmarks/coverage.py                      # every family -> benchmarks/results/coverage.json
    python benchmarks/coverage.py --families llama mixtral --out /tmp/c.json
    python benchmarks/coverage.py --families gemma3 llama4 --update   # re-measure these rows of the results

The same checks run in the test suite (`tests/test_family_attacks.py`, through `tests.support.invariants`).
Rendered by `benchmarks/tables.py` into the coverage table of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the tiny models and the checks

RESULTS = Path(__file__).resolve().parent / "results" / "coverage.json"


def describe_map(spec: Any) -> list[str]:
    """What an architecture map declares, in words (read from the spec, never from the family's name)."""
    attn, ffn, moe = spec.attention, spec.ffn, spec.moe
    out = []
    if attn.kind == "mla":
        out.append("latent attention (MLA)")
    elif attn.qkv is not None:
        layouts = sorted({str(r.value) for r in attn.qkv_layout if r.value is not None})
        out.append(f"fused qkv ({'/'.join(layouts)})")
    if attn.qk_norm is not None:
        kind = "L2" if attn.qk_norm.q.free else ("full-width" if attn.qk_norm.scope == "full" else "per-head")
        out.append(f"{kind} QK-norm" + (" (by config)" if attn.qk_norm.when else ""))
    norm = {"rms": "RMSNorm", "layer": "LayerNorm"}[spec.norm.type] + (" (1 + w)" if spec.norm.offset else "")
    out.append(norm)
    if spec.placement == "post":
        out.append("post-LN blocks")
    if attn.post_norm is not None or ffn.post_norm is not None:
        out.append("post-norms on outputs")
    if attn.norm is None or ffn.norm is None:
        out.append("no input norms")
    if spec.parallel:
        out.append("parallel block")
    if attn.rotary:
        partial = any(name in ("rotary_fraction", "rotary_dim") for name, _ in spec.config.values)
        out.append(f"rotary {attn.rotary}" + (" (partial)" if partial else ""))
    if spec.embedding_projection is not None:
        out.append("embedding projection")
    if ffn.type == "plain":
        out.append("plain FFN")
    if moe is not None:
        layout = "+".join(x for x, ok in (("per-expert", moe.experts), ("fused 3-D", moe.fused)) if ok)
        shared = ", shared expert" if moe.shared is not None else ""
        layers = {"all": "every layer", "from": "dense first layers", "every": "sparse step / dense list",
                  "list": "listed layers"}[moe.layers.rule]
        out.append(f"MoE ({layout}{shared}; {layers})")
    return out


def family_row(family: str, *, models: Any, fingerprints: Any, workdir: Path) -> dict[str, Any]:
    import hubguard
    from hubguard.weights.spec import load_specs
    from tests.support.factory import FAMILIES
    from tests.support.invariants import verify_attacks

    spec = next(s for s in load_specs() if s.family == family)
    t0 = time.perf_counter()
    base = fingerprints[family][0]
    report = verify_attacks(family=family, src=models[family][0], workdir=workdir,
                            base_fingerprint=base)
    seeds = hubguard.compare(base, fingerprints[family][1])
    return {
        "model_types": list(spec.model_types),
        "map": describe_map(spec),
        "terms": sorted(base.terms),
        "layers": len(base.layers),
        "model_class": FAMILIES[family].model_class,
        "attacks": report["attacks"],
        "combined": {k: v for k, v in report["combined"].items() if k != "terms"},
        "independent_seed": {"score": seeds.score, "verdict": seeds.verdict},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    from hubguard.weights.spec import load_specs
    from tests.support.factory import FamilyFingerprints, FamilyModels, minilm_dir, train_bpe_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", help="default: every shipped map")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--update", action="store_true", help="keep the other families' rows of --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    families = args.families or sorted(s.family for s in load_specs())
    with tempfile.TemporaryDirectory(prefix="hubguard-coverage-") as tmp:
        root = Path(tmp)
        models = FamilyModels(root / "models", bpe_tokenizer=train_bpe_tokenizer(root / "tok"), minilm=minilm_dir())
        fingerprints = FamilyFingerprints(models)
        rows = {}
        for f in families:
            rows[f] = family_row(f, models=models, fingerprints=fingerprints, workdir=root / "attacks" / f)
            print(json.dumps({f: {"attacks": sorted(rows[f]["attacks"]), "combined": rows[f]["combined"]["score"]}}),
                  flush=True)
    if args.update and args.out.exists():
        rows = {**json.loads(args.out.read_text())["families"], **rows}
    result = {"command": "python benchmarks/coverage.py", "transformers": transformers.__version__,
              "torch": torch.__version__, "families": dict(sorted(rows.items()))}
    from hubguard.utils.files import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
