"""How far a re-run of merge-protection seeds moved from the first run: per seed, method and attack both runs have,
the protected task's merged test accuracy, and the standalone change.

    python benchmarks/protect_rerun.py --first aa5f4c8 --mode lora --seeds 1,2,3,4

`--first` is a git revision holding the first runs' seed files (benchmarks/results/protect_<mode>_seed<k>.json); the
re-run is the working tree's. Writes benchmarks/results/protect_<mode>_rerun.json: every pair, and the largest
absolute difference. A re-run on another machine is not bit-identical (floating-point kernels differ), so this says
how much of a seed's number is that noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubguard.utils.files import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def _first(revision: str, name: str) -> dict[str, Any]:
    text = subprocess.run(["git", "show", f"{revision}:benchmarks/results/{name}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    return json.loads(text)


def compare(first: dict[str, Any], again: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m, v in first["methods"].items():
        w = again["methods"].get(m)
        if w is None:
            continue
        rows.append({"method": m, "what": "standalone_change", "first": v["standalone_change"]["value"],
                     "again": w["standalone_change"]["value"]})
        for a, x in v["attacks"].items():
            if a in w["attacks"]:
                rows.append({"method": m, "what": a, "first": x["protected_score"],
                             "again": w["attacks"][a]["protected_score"]})
    for r in rows:
        r["difference"] = r["again"] - r["first"]
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", required=True, help="git revision of the first runs' seed files")
    ap.add_argument("--mode", default="lora")
    ap.add_argument("--seeds", default="1,2,3,4")
    args = ap.parse_args(argv)
    per_seed = {}
    for k in (int(s) for s in args.seeds.split(",")):
        name = f"protect_{args.mode}_seed{k}.json"
        per_seed[k] = compare(_first(args.first, name), json.loads((RESULTS / name).read_text()))
    diffs = [abs(r["difference"]) for rows in per_seed.values() for r in rows]
    out = {"kind": "hubguard-protect-rerun", "schema_version": 1, "mode": args.mode, "first": args.first,
           "seeds": sorted(per_seed), "max_abs_difference": max(diffs), "pairs": len(diffs),
           "mean_abs_difference": sum(diffs) / len(diffs), "per_seed": per_seed}
    atomic_write_json(RESULTS / f"protect_{args.mode}_rerun.json", out)
    print(json.dumps({k: out[k] for k in ("max_abs_difference", "mean_abs_difference", "pairs")}))


if __name__ == "__main__":
    main()
